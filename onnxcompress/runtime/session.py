"""`Session`: run a plain ONNX file or an onnxcompress container on ONNX Runtime.

Same call shape as `onnxruntime.InferenceSession`. This module imports the container reader and
ONNX Runtime only, never the passes (a test enforces that direction).

Every failure is an onnxcompress error (`BadInputError` and its subclasses, exit code 2 in the
CLI) whose message is one line naming the user's file: a container that does not read is a
`ContainerError`; a model ONNX Runtime refuses, inputs it refuses, or a custom op that fails is a
`SessionError`, whose `detail` keeps ONNX Runtime's full text and whose `__cause__` is the
original exception.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..container import is_container, load_for_ort
from ..container.format import MAGIC
from ..container.reader import session_from_arrays
from ..errors import BadInputError, OnnxCompressError, SessionError
from . import custom_ops
from .model_check import check_custom_nodes, parse_model
from .run_context import OpState, run_scope
from .threads import check_threads, cpu_count

SUMMARY_CHARS = 240  # ONNX Runtime's messages run to 800 characters and several lines


def session_options(threads: int | None = None, *, custom: bool = True) -> ort.SessionOptions:
    """SessionOptions prepared for onnxcompress models: with `custom` (the default) the XnorConv
    custom op is registered (onnxruntime-extensions), so that
    `onnxruntime.InferenceSession(path, session_options())` runs binarized models.

    `threads` (1..`max_threads()`) sets ONNX Runtime's intra-op threads. XnorConv's own threads
    follow the `Session` that runs it (`Session(threads=...)`); under a plain onnxruntime
    session it uses every CPU this process may run on."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = check_threads(threads)
        so.inter_op_num_threads = 1
    return custom_ops.add_to(so) if custom else so


@dataclass
class _Loaded:
    """A model ready for ONNX Runtime."""

    where: str  # the user's name for it, for messages
    source: str | bytes  # what ONNX Runtime loads: a path, or model bytes
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # container weights, by name
    custom: bool = False  # uses the custom-op domain


class Session:
    """An ONNX Runtime session over a `.onnx` file, a container file, or the bytes of either.

    `threads` (1..`max_threads()`) sets ONNX Runtime's intra-op threads and XnorConv's; None
    leaves ONNX Runtime's default and gives XnorConv every CPU this process may run on.
    """

    def __init__(self, model: str | os.PathLike | bytes, sess_options: ort.SessionOptions | None = None,
                 providers: Sequence[str] | None = None, *, threads: int | None = None):
        if threads is not None:
            threads = check_threads(threads)
        loaded = _load(model)
        self._where = loaded.where
        self._ops = OpState(threads or cpu_count())  # this session's XnorConv state
        # a caller's own SessionOptions are used as given: build them with session_options()
        so = sess_options or session_options(threads, custom=loaded.custom)
        providers = list(providers or ["CPUExecutionProvider"])
        try:
            if loaded.arrays:
                # decoded weights go straight to ORT as external initializers: no proto copy
                self._sess = session_from_arrays(loaded.source, loaded.arrays, so, providers)
            else:
                self._sess = ort.InferenceSession(loaded.source, so, providers=providers)
        except OnnxCompressError:
            raise
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise _ort_error(f"{self._where}: ONNX Runtime cannot load the model", e) from e
        if not self._sess.get_outputs():
            raise BadInputError(f"{self._where}: the graph has no outputs; there is nothing to run")

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
        """The model's outputs; a SessionError when ONNX Runtime or a custom op refuses."""
        ro = run_options if run_options is not None else ort.RunOptions()
        was_terminating = ro.terminate
        failed: Exception | None = None
        with run_scope(self._ops, ro) as scope:
            try:
                outputs = self._sess.run(output_names, input_feed, ro)
            except Exception as e:  # noqa: BLE001 -- reported below, after the op's own error
                failed = e
        if scope.error is not None:
            ro.terminate = was_terminating  # the caller's RunOptions stay usable
            raise _op_error(self._where, scope.error) from scope.error
        if failed is not None:
            raise _ort_error(f"{self._where}: ONNX Runtime cannot run the model", failed) from failed
        return outputs

    def get_inputs(self):
        return self._sess.get_inputs()

    def get_outputs(self):
        return self._sess.get_outputs()

    @property
    def inner(self) -> ort.InferenceSession:
        return self._sess


def _load(model: str | os.PathLike | bytes) -> _Loaded:
    """Read a model for ONNX Runtime: containers are decoded, custom-op nodes are checked."""
    if isinstance(model, bytes | bytearray | memoryview):
        data = bytes(model)
        if data.startswith(MAGIC):  # a container's bytes
            loaded = _Loaded("container bytes", *load_for_ort(data, "container bytes"))
        else:
            loaded = _Loaded("model bytes", data)
    elif isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.is_file():
            raise BadInputError(f"{model}: no such file")
        if is_container(path):
            loaded = _Loaded(str(model), *load_for_ort(path))
        else:
            loaded = _Loaded(str(model), str(path))
    else:
        raise BadInputError(
            f"Session needs a file path or model bytes, got {type(model).__name__}"
        )
    loaded.custom = custom_ops.available() and custom_ops.uses_custom_domain(loaded.source)
    if loaded.custom:
        # refuse bad custom-op attributes now, with the node's name, not in the middle of a run
        data = loaded.source if isinstance(loaded.source, bytes) else Path(loaded.source).read_bytes()
        check_custom_nodes(parse_model(data, loaded.where), loaded.where)
    return loaded


def _op_error(where: str, exc: BaseException) -> BaseException:
    """What Session.run raises for an exception recorded by a custom op."""
    if not isinstance(exc, Exception):
        return exc  # KeyboardInterrupt and the like go on as they are
    if isinstance(exc, OnnxCompressError):
        return SessionError(f"{where}: {exc}", getattr(exc, "detail", None))
    return SessionError(f"{where}: {_one_line(str(exc)) or type(exc).__name__}", str(exc))


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


def _one_line(text: str, limit: int = SUMMARY_CHARS) -> str:
    """A message on one line without ONNX Runtime's status prefix, at most `limit` chars."""
    flat = " ".join(_ORT_PREFIX.sub("", text.strip()).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _ort_error(what: str, exc: Exception) -> SessionError:
    """A one-line SessionError for an ONNX Runtime exception; the full text goes to `detail`."""
    return SessionError(f"{what}: {_one_line(str(exc)) or type(exc).__name__}", str(exc))
