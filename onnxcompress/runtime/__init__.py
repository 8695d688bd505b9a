"""Run compressed models: `Session` accepts a plain ONNX file or an onnxcompress container."""

from .session import Session, session_options

__all__ = ["Session", "session_options"]
