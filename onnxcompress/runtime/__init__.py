"""Run compressed models: `Session` accepts a plain ONNX file or an onnxcompress container."""

from .session import Session, session_options
from .threads import MAX_THREADS_PER_CPU, max_threads

__all__ = ["MAX_THREADS_PER_CPU", "Session", "max_threads", "session_options"]
