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
"""

from __future__ import annotations

import importlib.util
import logging
import mmap
import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .. import ops
from ..ops import CONV_ATTRS, decode_conv_attrs

log = logging.getLogger(__name__)

_lock = threading.Lock()
_registered = False


# Weights prepared for the kernel, per layer.  onnxruntime-extensions hands the op a fresh copy
# of the packed weights on every call (new address each time), so layers are found by geometry
# and the copy is compared to the cached bits: equal bytes, not an address, select the prepared
# layout (~0.4 us for a 9 KB layer as one bytes comparison, ~20 us for VGG's 295 KB with numpy,
# against 25-2000 us of kernel).
_PREPARED_PER_GEOMETRY = 64   # layers sharing one geometry; the oldest is dropped past this
SMALL_WEIGHTS = 64 << 10      # bytes up to which the cache compares whole bytes objects
_prepared: dict[tuple, list[tuple[bytes, object]]] = {}
_threads = max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 1


def set_threads(threads: int | None) -> None:
    """Threads every XnorConv call in this process may use (ONNX Runtime does not tell Python
    ops its intra-op setting); None restores the default, all CPUs this process may run on.
    The kernel keeps small layers on one thread whatever this says."""
    global _threads
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if int(threads) < 1:
        raise ValueError(f"XnorConv threads must be >= 1, got {threads}")
    _threads = int(threads)


@lru_cache(maxsize=1024)
def _geometry(conv_attrs: str) -> dict[str, object]:
    return decode_conv_attrs(conv_attrs)


def _prepared_weights(w_bits: np.ndarray, channels: int, kernel_shape: tuple, mode: str) -> object:
    """The XnorWeights for these bits, prepared on first sight and kept for the process."""
    from ..kernels.xnor_native import prepare_weights

    key = (mode, channels, kernel_shape, w_bits.shape)
    bucket = _prepared.setdefault(key, [])
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


def _xnor_conv_op(
    x: np.ndarray, w_bits: np.ndarray, alpha: np.ndarray, bias: np.ndarray, **attrs: object
) -> np.ndarray:
    """The body onnxruntime-extensions calls for each XnorConv node."""
    from ..kernels.xnor_native import xnor_conv

    geo = _geometry(str(attrs[CONV_ATTRS]))
    mode = str(attrs[ops.ATTR_MODE])
    kernel_shape = geo[ops.ATTR_KERNEL_SHAPE]
    group = int(geo[ops.ATTR_GROUP])
    weights = w_bits
    if group == 1 and x.ndim == 4 and mode in ops.OP_MODES:   # else xnor_conv explains
        weights = _prepared_weights(w_bits, int(x.shape[1]), tuple(kernel_shape), mode)
    return xnor_conv(
        x,
        weights,
        alpha,
        bias,
        kernel_shape=kernel_shape,
        strides=geo[ops.ATTR_STRIDES],
        pads=geo[ops.ATTR_PADS],
        dilations=geo[ops.ATTR_DILATIONS],
        group=group,
        mode=mode,
        threads=_threads,
    )


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
            _install_array_results(opdef)
            _registered = True
    return ox.get_library_path()


def _install_array_results(opdef: object) -> None:
    """Hand XnorConv's output to ONNX Runtime as an array, every other Python op as before.

    onnxruntime-extensions returns a Python op's result to its C++ side as
    ``result.flatten().tolist()``: about 1 s for a [1000, 64, 14, 14] output, ten times the
    kernel. Its C++ side takes the flat float32 array as well, so the handler installed here
    passes the array for XnorConv and calls the stock handler for any other op. It relies on
    the extensions' ``_ocos`` module; when that is not as expected, the stock handler stays
    (slower, same results).
    """
    try:
        from onnxruntime_extensions import _ocos

        stock = _ocos._on_pyop_invocation
        our_id = opdef._nativedef.obj_id
        cast = opdef.cast_attributes
    except (ImportError, AttributeError) as exc:
        log.info("XnorConv: keeping onnxruntime-extensions' list marshalling (%s)", exc)
        return

    def handler(k_id: int, feed: Sequence[np.ndarray], attributes: dict) -> tuple:
        if k_id != our_id:
            return stock(k_id, feed, attributes)
        y = _xnor_conv_op(*feed, **cast(attributes))
        return (k_id, y.shape, np.ascontiguousarray(y, dtype=np.float32).reshape(-1))

    _ocos.PyCustomOpDef.install_hooker(handler)


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
