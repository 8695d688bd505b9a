"""XnorConv in ONNX Runtime through onnxruntime-extensions (Python custom ops).

The one call that lets a plain ONNX Runtime session run a binarized model::

    import onnxruntime, onnxcompress.runtime
    sess = onnxruntime.InferenceSession("bin.onnx", onnxcompress.runtime.session_options())

`session_options()` (re-exported by ``onnxcompress.runtime``) registers the op below once per
process and returns SessionOptions with the onnxruntime-extensions library attached.

The op body calls ``onnxcompress.kernels.xnor_native.xnor_conv`` (the compiled kernel; with the
library missing, its numpy reference with a RuntimeWarning, never a crash).

Why a string attribute: onnxruntime-extensions hands a Python op only attributes of type int,
float or string, and refuses to create a session when a declared attribute has another type.
The contract (``onnxcompress.ops``) gives XnorConv ONNX Conv's integer-list attributes
(``kernel_shape``, ``strides``, ``pads``, ``dilations``); the converter writes those AND the same
values once more in the string attribute ``ops.CONV_ATTRS`` (``ops.encode_conv_attrs``), which is what the
Python op reads. Every declared attribute must be present on the node, so the converter always
writes ``mode`` and ``CONV_ATTRS``, and always writes the bias input B (zeros when the layer
has none): these Python ops have no optional inputs.

Failures: an exception that leaves a Python op ends the process (onnxruntime-extensions' C++ side
cannot pass it on), so the op body never raises. Under ``Session.run`` it records the exception
in the run's scope (``run_context``), which stops the run and makes ``Session.run`` raise it;
under a plain onnxruntime session it logs the error, warns, and returns an empty output.
``Session`` also checks every XnorConv node before ONNX Runtime sees the model
(``model_check``), so bad attributes are refused when the session is created.
"""

from __future__ import annotations

import importlib.util
import logging
import mmap
import threading
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .. import ops
from ..ops import CONV_ATTRS, decode_op_attrs
from . import ocos_hook, run_context
from .threads import cpu_count

log = logging.getLogger(__name__)

_lock = threading.Lock()
_registered = False


# Weights prepared for the kernel, per layer.  onnxruntime-extensions hands the op a fresh copy
# of the packed weights on every call (new address each time), so layers are found by geometry
# and the copy is compared to the cached bits: equal bytes, not an address, select the prepared
# layout (~0.4 us for a 9 KB layer as one bytes comparison, ~20 us for VGG's 295 KB with numpy,
# against 25-2000 us of kernel).  The cache lives in each Session's OpState; a plain
# onnxruntime session uses _PLAIN's, with every CPU for the kernel.
_PREPARED_PER_GEOMETRY = 64   # layers sharing one geometry; the oldest is dropped past this
SMALL_WEIGHTS = 64 << 10      # bytes up to which the cache compares whole bytes objects
_PLAIN = run_context.OpState(threads=cpu_count())


@lru_cache(maxsize=1024)
def _attributes(mode: str, conv_attrs: str) -> dict[str, object]:
    return decode_op_attrs(mode, conv_attrs)


def _prepared_weights(cache: dict, w_bits: np.ndarray, channels: int, kernel_shape: tuple,
                      mode: str) -> object:
    """The XnorWeights for these bits, prepared on first sight and kept in `cache`."""
    from ..kernels.xnor_native import prepare_weights

    key = (mode, channels, kernel_shape, w_bits.shape)
    bucket = cache.setdefault(key, [])
    # small layers: one bytes comparison (0.4 us for 9 KB); large ones: numpy's (no copy)
    small = w_bits.nbytes <= SMALL_WEIGHTS
    seen = w_bits.tobytes() if small else w_bits.reshape(-1)[:64].tobytes()  # all, or a head
    for bits, prepared in bucket:
        if bits == seen and (small or np.array_equal(prepared.packed, w_bits)):
            return prepared
    prepared = prepare_weights(np.array(w_bits, copy=True), channels, kernel_shape, mode=mode)
    bucket.append((seen, prepared))
    if len(bucket) > _PREPARED_PER_GEOMETRY:
        del bucket[0]
    return prepared


def _compute(state: run_context.OpState, x: np.ndarray, w_bits: np.ndarray, alpha: np.ndarray,
             bias: np.ndarray, attrs: dict) -> np.ndarray:
    """XnorConv of one node with `state`'s threads and weight cache; raises on bad input."""
    from ..kernels.xnor_native import xnor_conv

    geo = _attributes(str(attrs[ops.ATTR_MODE]), str(attrs[CONV_ATTRS]))
    mode, kernel_shape = geo[ops.ATTR_MODE], geo[ops.ATTR_KERNEL_SHAPE]
    weights = w_bits
    if x.ndim == 4:   # else xnor_conv explains
        weights = _prepared_weights(state.prepared, w_bits, int(x.shape[1]), kernel_shape, mode)
    return xnor_conv(
        x,
        weights,
        alpha,
        bias,
        kernel_shape=kernel_shape,
        strides=geo[ops.ATTR_STRIDES],
        pads=geo[ops.ATTR_PADS],
        dilations=geo[ops.ATTR_DILATIONS],
        mode=mode,
        threads=state.threads,
    )


# What a failed call returns: an empty tensor, never a plausible result (a shape that also fails
# to broadcast against the op's usual consumers).
_FAILED = np.empty((0, 0, 0, 0), dtype=np.float32)


def _xnor_conv_op(
    x: np.ndarray, w_bits: np.ndarray, alpha: np.ndarray, bias: np.ndarray, **attrs: object
) -> np.ndarray:
    """The body onnxruntime-extensions calls for each XnorConv node; it never raises."""
    scope = run_context.current()
    try:
        return _compute(scope.ops if scope else _PLAIN, x, w_bits, alpha, bias, attrs)
    except BaseException as exc:  # raising here would end the process
        if scope is not None:
            scope.fail(exc)  # Session.run re-raises it, KeyboardInterrupt included
            return _FAILED
        if not isinstance(exc, Exception):
            raise  # a plain session cannot pass it on: the interrupt ends the process
        log.error("XnorConv failed in a plain onnxruntime session: %s", exc)
        warnings.warn(
            f"XnorConv failed and returned an empty output: {exc} (run the model with "
            "onnxcompress.runtime.Session to get this as an exception)",
            RuntimeWarning,
            stacklevel=1,
        )
        return _FAILED


def register() -> str:
    """Declare XnorConv to onnxruntime-extensions (once per process); return its library path."""
    global _registered
    import onnxruntime_extensions as ox

    with _lock:
        if not _registered:
            if ox.default_opset_domain() != ops.DOMAIN:
                raise RuntimeError(
                    f"onnxruntime-extensions puts Python ops in {ox.default_opset_domain()!r}, "
                    f"but the XnorConv contract says {ops.DOMAIN!r}"
                )
            t = ox.PyCustomOpDef
            opdef = ox.onnx_op(
                op_type=ops.XNOR_CONV,
                inputs=[t.dt_float, t.dt_uint8, t.dt_float, t.dt_float],
                outputs=[t.dt_float],
                attrs={ops.ATTR_MODE: t.dt_string, CONV_ATTRS: t.dt_string},
            )(_xnor_conv_op)
            try:
                ocos_hook.route_to_array_results(opdef, _xnor_conv_op)
            except ocos_hook.HookUnavailable as exc:
                warnings.warn(
                    f"XnorConv: {exc}; its results go through onnxruntime-extensions' list "
                    "marshalling (same values, about ten times slower on large outputs)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            _registered = True
    return ox.get_library_path()


def add_to(so: ort.SessionOptions) -> ort.SessionOptions:
    """Register XnorConv and attach the onnxruntime-extensions library to `so`."""
    so.register_custom_ops_library(register())
    return so


def available() -> bool:
    """True when onnxruntime-extensions is installed (checked without importing it)."""
    return importlib.util.find_spec("onnxruntime_extensions") is not None


def uses_custom_domain(model: bytes | str | Path) -> bool:
    """Whether serialized model bytes (or a plain .onnx file) mention the custom-op domain.

    A byte search, not a parse: a false positive only costs a registration.
    """
    needle = ops.DOMAIN.encode()
    if isinstance(model, bytes):
        return needle in model
    with open(model, "rb") as f:
        if f.seek(0, 2) == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(needle) >= 0
