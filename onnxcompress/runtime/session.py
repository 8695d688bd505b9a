"""`Session`: run a plain ONNX file or an onnxcompress container on ONNX Runtime.

Same call shape as `onnxruntime.InferenceSession`. This module imports the container reader and
ONNX Runtime only, never the passes (a test enforces that direction).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..container import is_container, ort_session
from ..errors import BadInputError, OnnxCompressError
from . import custom_ops


def session_options(threads: int | None = None, *, custom: bool = True) -> ort.SessionOptions:
    """SessionOptions prepared for onnxcompress models: with `custom` (the default) the XnorConv
    custom op is registered (onnxruntime-extensions), so that
    `onnxruntime.InferenceSession(path, session_options())` runs binarized models.

    `threads` sets ONNX Runtime's intra-op threads and, process-wide, XnorConv's (ONNX Runtime
    does not pass its setting to Python ops)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if custom:
            custom_ops.set_threads(threads)
    return custom_ops.add_to(so) if custom else so


class Session:
    """An ONNX Runtime session over a `.onnx` file, a container file, or model bytes."""

    def __init__(self, model: str | os.PathLike | bytes, sess_options: ort.SessionOptions | None = None,
                 providers: Sequence[str] | None = None, *, threads: int | None = None):
        container = _is_container_path(model)
        # a caller's own SessionOptions are used as given: build them with session_options()
        so = sess_options or session_options(threads, custom=_needs_custom_ops(model, container))
        providers = list(providers or ["CPUExecutionProvider"])
        try:
            if container:
                # decoded weights go straight to ORT as external initializers: no proto copy
                self._sess = ort_session(model, so, providers)
            else:
                self._sess = ort.InferenceSession(_model_source(model), so, providers=providers)
        except OnnxCompressError:
            raise
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            where = model if not isinstance(model, bytes) else "model bytes"
            raise BadInputError(f"{where}: ONNX Runtime cannot load the model: {e}") from e
        if not self._sess.get_outputs():
            where = model if not isinstance(model, bytes) else "model bytes"
            raise BadInputError(f"{where}: the graph has no outputs; there is nothing to run")

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


def _needs_custom_ops(model: str | os.PathLike | bytes, container: bool) -> bool:
    """Register XnorConv only for models that mention its domain (importing
    onnxruntime-extensions is not free); a container compresses its graph: always for it."""
    if not custom_ops.available():
        return False
    return container or custom_ops.uses_custom_domain(model)


def _model_source(model: str | os.PathLike | bytes) -> str | bytes:
    return model if isinstance(model, bytes) else str(model)
