"""onnxcompress: make exported ONNX models smaller and faster after training."""

__version__ = "0.1.0"
