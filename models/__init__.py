"""The onnxcompress model zoo: Fashion-MNIST loader, training, evaluation, legacy topologies."""
