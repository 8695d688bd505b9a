"""`Session`: run a plain ONNX file or an onnxcompress container on ONNX Runtime.

Same call shape as `onnxruntime.InferenceSession`. This module imports the container reader and
ONNX Runtime only, never the passes (a test enforces that direction).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from ..container import is_container, ort_session
from ..errors import BadInputError, OnnxCompressError


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """SessionOptions prepared for onnxcompress models (custom ops registered when present)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


class Session:
    """An ONNX Runtime session over a `.onnx` file, a container file, or model bytes."""

    def __init__(self, model: str | os.PathLike | bytes, sess_options: ort.SessionOptions | None = None,
                 providers: Sequence[str] | None = None, *, threads: int | None = None):
        so = sess_options or session_options(threads)
        providers = list(providers or ["CPUExecutionProvider"])
        try:
            if _is_container_path(model):
                # decoded weights go straight to ORT as external initializers: no proto copy
                self._sess = ort_session(model, so, providers)
            else:
                self._sess = ort.InferenceSession(_model_source(model), so, providers=providers)
        except OnnxCompressError:
            raise
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            where = model if not isinstance(model, bytes) else "model bytes"
            raise BadInputError(f"{where}: ONNX Runtime cannot load the model: {e}") from e

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
        return self._sess.run(output_names, input_feed, run_options)

    def get_inputs(self):
        return self._sess.get_inputs()

    def get_outputs(self):
        return self._sess.get_outputs()

    @property
    def inner(self) -> ort.InferenceSession:
        return self._sess


def _is_container_path(model: str | os.PathLike | bytes) -> bool:
    if isinstance(model, bytes):
        return False
    if not Path(model).is_file():
        raise BadInputError(f"{model}: no such file")
    return is_container(model)


def _model_source(model: str | os.PathLike | bytes) -> str | bytes:
    return model if isinstance(model, bytes) else str(model)
