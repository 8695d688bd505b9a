"""The one private onnxruntime-extensions interface onnxcompress uses, kept in one place.

onnxruntime-extensions hands a Python op's result to its C++ side through a handler of its
private `_ocos` module that returns ``(op id, shape, values)``; the stock handler builds `values`
with ``result.flatten().tolist()``: about 1 s for a [1000, 64, 14, 14] output, ten times
XnorConv's kernel. The C++ side takes a flat float32 array as well, so `route_to_array_results`
installs one handler that passes the results of the routed ops as arrays and calls the stock
handler for every other Python op.

What this relies on, each checked by tests/runtime/test_ocos_hook.py so that an upgrade that
changes one fails the suite instead of falling back unnoticed:
- ``_ocos._on_pyop_invocation(k_id, feed, attributes)``, the stock handler;
- ``_ocos.PyCustomOpDef.install_hooker(handler)``, which replaces the handler process-wide;
- an op definition's ``_nativedef.obj_id``, the k_id its calls carry;
- the C++ side accepting a flat float32 numpy array where the stock handler puts a list.
A routed body must never raise: an exception in a handler ends the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np


class HookUnavailable(RuntimeError):
    """onnxruntime-extensions no longer has what `route_to_array_results` relies on."""


_lock = threading.Lock()
_routes: dict[int, Callable[..., np.ndarray]] = {}
_installed = False


def route_to_array_results(opdef: object, body: Callable[..., np.ndarray]) -> None:
    """Call `body(*inputs, **attributes)` for `opdef`'s nodes and hand its float32 result to
    onnxruntime-extensions as an array; raise HookUnavailable when the private API changed."""
    global _installed
    try:
        from onnxruntime_extensions import _ocos

        stock = _ocos._on_pyop_invocation
        install = _ocos.PyCustomOpDef.install_hooker
        op_id = opdef._nativedef.obj_id
    except (ImportError, AttributeError) as exc:
        raise HookUnavailable(f"onnxruntime-extensions changed its private _ocos API: {exc}") from exc

    def handler(k_id: int, feed: Sequence[np.ndarray], attributes: dict) -> tuple:
        routed = _routes.get(k_id)
        if routed is None:
            return stock(k_id, feed, attributes)
        y = np.ascontiguousarray(routed(*feed, **attributes), dtype=np.float32)
        return (k_id, y.shape, y.reshape(-1))

    with _lock:
        _routes[op_id] = body
        if not _installed:
            install(handler)
            _installed = True


def unroute(opdef: object) -> None:
    """Give `opdef`'s calls back to the stock handler (tests)."""
    with _lock:
        _routes.pop(opdef._nativedef.obj_id, None)
