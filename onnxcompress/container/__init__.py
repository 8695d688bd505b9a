"""The onnxcompress container: a compact, checksummed file for a compressed ONNX model.

Deep Compression's storage stages (Han et al., "Deep Compression", ICLR 2016): sparse weights in
relative-index form, shared weights as codebook indices, and Huffman coding on top (or rANS
coding, where that is smaller). See docs/FORMAT.md for the byte layout.
"""

from __future__ import annotations

from .reader import (
    is_container,
    load_for_ort,
    ort_session,
    read_container,
    read_container_bytes,
    stored_tensors,
)
from .writer import ContainerReport, TensorRow, container_bytes, write_container

__all__ = [
    "ContainerReport",
    "TensorRow",
    "container_bytes",
    "is_container",
    "load_for_ort",
    "ort_session",
    "read_container",
    "read_container_bytes",
    "stored_tensors",
    "write_container",
]
