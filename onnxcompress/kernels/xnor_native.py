"""ctypes binding to the native XnorConv kernels (csrc/xnor, built as ``_xnor<EXT_SUFFIX>``).

``xnor_conv`` has the call shape an onnxruntime-extensions Python custom op needs; ctypes drops
the GIL during the C call.  The kernel path is chosen per call (``path=``: "auto", "avx512",
"avx2", "portable" or "reference"), never through global state.  A path this CPU lacks falls
back to "portable", and a missing or unloadable library to the numpy reference, each with a
``warnings.warn``.

Weights can be passed as the packed bits (laid out again on every call) or as ``XnorWeights``
from ``prepare_weights``, laid out once for the chosen path; a runtime holding a model should
prepare each layer once.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import operator
import warnings
import weakref
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..ops import ATTR_MAX, OP_MODES, check_conv_attrs, check_op_mode, conv_output_hw, words_per_tap
from .xnor_ref import check_packed, pack_weights, unpack_weights, xnor_conv_ref

__all__ = [
    "PATHS",
    "XnorWeights",
    "available_paths",
    "best_path",
    "pack_weights",
    "prepare_weights",
    "unpack_weights",
    "xnor_conv",
    "xnor_conv_timed",
]

PATHS = ("portable", "avx2", "avx512")  # index = the C enum value
REFERENCE = "reference"
_LANE_BITS = {"portable": 64, "avx2": 64, "avx512": 32}  # K unit of each path's GEMM
_ERRORS = {
    -1: "invalid geometry",
    -2: "kernel path not supported on this CPU",
    -3: "out of memory",
    -4: "thread creation failed",
    -5: "unknown mode",
}

_vp = ctypes.c_void_p
_i32 = ctypes.c_int32
_sz = ctypes.c_size_t
# The C pool never runs more than this many threads per call (xnor_conv.c); asking for more is
# allowed and means this many (passed clamped, so a huge count is never truncated by ctypes).
KERNEL_MAX_THREADS = 64


class _Geom(ctypes.Structure):
    """xnor_geom in csrc/xnor/xnor.h."""

    # fmt: off
    _fields_ = [(name, _i32) for name in ("n", "c", "h", "w", "m", "kh", "kw", "sh", "sw",
                                          "dh", "dw", "pt", "pl", "pb", "pr")]
    # fmt: on


class _Timing(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_double)
        for name in ("pack", "gemm", "total", "pack_cpu", "gemm_cpu", "total_cpu")
    ]


def _find_library() -> Path | None:
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_xnor{suffix}"
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded C library, or None (with a warning) when it is missing or fails to load."""
    found = _find_library()
    if found is None:
        warnings.warn(
            "XnorConv: native library _xnor*.so not found next to "
            f"{Path(__file__).name}; using the slow numpy reference "
            "(build it with `pip install -e .`)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    try:
        return _declare(ctypes.CDLL(str(found)))
    except (OSError, AttributeError) as exc:
        warnings.warn(
            f"XnorConv: could not load {found.name} ({exc}); using the slow numpy reference",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


_int, _i64, _f64 = ctypes.c_int, ctypes.c_int64, ctypes.c_double
_GEOM, _TIMING = ctypes.POINTER(_Geom), ctypes.POINTER(_Timing)
# name: (argtypes, restype), as declared in csrc/xnor/xnor.h
_SIGNATURES = {
    "xnor_conv2d": (
        [_GEOM, _int, _vp, _sz, _vp, _sz, _vp, _vp, _vp, _sz, _int, _int, _TIMING],
        _int,
    ),
    "xnor_weights_create": (
        [_int, _int, _i32, _i32, _i32, _i32, _vp, _sz, _int, ctypes.POINTER(_vp)],
        _int,
    ),
    "xnor_weights_free": ([_vp], None),
    "xnor_weights_bytes": ([_vp], _i64),
    "xnor_conv2d_prepared": ([_vp, _GEOM, _vp, _sz, _vp, _vp, _vp, _sz, _int, _TIMING], _int),
    "xnor_path_supported": ([_int], _int),
    "xnor_best_path": ([], _int),
    "xnor_measure_ghz": ([_i64], _f64),
    "xnor_peak_binary": ([_int, _i64], _f64),
    "xnor_peak_fma": ([_int, _i64], _f64),
    "xnor_bench_gemm_core": ([_int, _i32, _i32, _i32, _int, _int, _vp], _int),
}


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, (args, res) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def available_paths() -> list[str]:
    """Native paths this CPU supports, fastest last, then "reference" (always there)."""
    lib = library()
    native = [p for i, p in enumerate(PATHS) if lib is not None and lib.xnor_path_supported(i)]
    return native + [REFERENCE]


def best_path() -> str:
    """The path ``path="auto"`` resolves to."""
    lib = library()
    return REFERENCE if lib is None else PATHS[lib.xnor_best_path()]


def _resolve(path: str) -> str:
    if path == "auto":
        return best_path()
    if path == REFERENCE:
        return path
    if path not in PATHS:
        raise ValueError(
            f"unknown XnorConv path {path!r}; expected one of {['auto', *PATHS, REFERENCE]}"
        )
    lib = library()
    if lib is None:
        return REFERENCE
    if not lib.xnor_path_supported(PATHS.index(path)):
        warnings.warn(
            f"XnorConv: path {path!r} is not supported on this CPU; using 'portable'",
            RuntimeWarning,
            stacklevel=4,
        )
        return "portable"
    return path


def _addr(a: np.ndarray) -> int:
    """Data address of a C-contiguous array (the buffer protocol is ~4x cheaper than .ctypes)."""
    if a.flags.writeable and a.size:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    return a.ctypes.data


def _threads(threads: int) -> int:
    """The thread count for the C call: an int >= 1, clamped to what the pool runs."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"XnorConv: threads must be an integer >= 1, got {threads!r}")
    return min(int(threads), KERNEL_MAX_THREADS)


def _int32(name: str, value: int) -> int:
    if not 1 <= value <= ATTR_MAX:
        raise ValueError(f"XnorConv: {name} = {value} is outside 1..{ATTR_MAX} (the C kernels' int32)")
    return value


def _vector(v: np.ndarray, m: int, name: str) -> np.ndarray:
    a = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
    if a.shape[0] != m:
        raise ValueError(f"XnorConv: {name} has {a.shape[0]} values, expected M={m}")
    return a


def _output(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"XnorConv: out must be a C-contiguous float32 array of shape {list(shape)}, "
            f"got {out.dtype} {list(out.shape)}"
        )
    return out


@lru_cache(maxsize=4096)
def _geometry(
    x_shape: tuple[int, ...], m: int, ks: tuple, st: tuple, pd: tuple, dl: tuple
) -> tuple[_Geom, tuple[int, int, int, int]]:
    """The C geometry and output shape of one call (a runtime repeats the same few)."""
    for name, v in zip("NCHW", x_shape):
        _int32(f"input dimension {name}", v)
    _int32("M (output channels)", m)
    n, c, h, w = x_shape
    oh, ow = conv_output_hw((h, w), ks, st, pd, dl)
    # ks, st, pd, dl passed ops.check_conv_attrs: no field of _Geom is truncated
    return _Geom(n, c, h, w, m, *ks, *st, *dl, *pd), (n, m, oh, ow)


def _fail(rc: int, what: str) -> None:
    detail = _ERRORS.get(rc, f"error {rc}")
    raise (MemoryError if rc == -3 else ValueError)(
        f"XnorConv native kernel failed: {detail} ({what})"
    )


class XnorWeights:
    """Packed weights laid out once for one kernel path and mode (see ``prepare_weights``)."""

    def __init__(
        self,
        packed: np.ndarray,
        channels: int,
        kernel_shape: Sequence[int],
        mode: str = "xnor",
        path: str = "auto",
        threads: int = 1,
    ):
        self.kernel_shape = check_conv_attrs(kernel_shape)[0]
        self.channels = _int32("channels", operator.index(channels))
        self.mode = check_op_mode(mode)
        self.packed = check_packed(packed, self.channels, self.kernel_shape)
        self.m = self.packed.shape[0]
        self.path = _resolve(path)
        self._handle: int | None = None
        if self.path != REFERENCE:
            h = _vp()
            rc = library().xnor_weights_create(
                OP_MODES.index(self.mode),
                PATHS.index(self.path),
                self.m,
                self.channels,
                *self.kernel_shape,
                self.packed.ctypes.data,
                self.packed.nbytes // 8,
                _threads(threads),
                ctypes.byref(h),
            )
            if rc != 0:
                _fail(
                    rc,
                    f"preparing weights M={self.m}, C={self.channels}, "
                    f"kernel_shape={list(self.kernel_shape)}",
                )
            self._handle = h.value
            weakref.finalize(self, library().xnor_weights_free, h.value)

    @property
    def nbytes(self) -> int:
        """Bytes of the native layout (0 for the reference path)."""
        return 0 if self._handle is None else int(library().xnor_weights_bytes(self._handle))


def prepare_weights(
    packed: np.ndarray,
    channels: int,
    kernel_shape: Sequence[int],
    *,
    mode: str = "xnor",
    path: str = "auto",
    threads: int = 1,
) -> XnorWeights:
    """Lay out packed weights once, for repeated ``xnor_conv`` calls on inputs with C=channels."""
    return XnorWeights(packed, channels, kernel_shape, mode=mode, path=path, threads=threads)


def _conv(
    x: np.ndarray,
    packed_w: np.ndarray | XnorWeights,
    alpha: np.ndarray,
    bias: np.ndarray | None,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    mode: str = "xnor",
    group: int = 1,
    threads: int = 1,
    path: str = "auto",
    out: np.ndarray | None = None,
    timed: bool = False,
) -> tuple[np.ndarray, dict[str, float]]:
    """The shared body of ``xnor_conv`` and ``xnor_conv_timed``."""
    ks, st, pd, dl = check_conv_attrs(kernel_shape, strides, pads, dilations, group)
    mode = check_op_mode(mode)
    threads = _threads(threads)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"XnorConv expects a 4-D NCHW float32 input, got shape {x.shape}")
    c = x.shape[1]
    prepared = packed_w if isinstance(packed_w, XnorWeights) else None
    if prepared is not None:
        if (prepared.channels, prepared.kernel_shape, prepared.mode) != (c, ks, mode):
            raise ValueError(
                f"XnorConv: weights prepared for C={prepared.channels}, kernel_shape="
                f"{list(prepared.kernel_shape)}, mode={prepared.mode!r} used with C={c}, "
                f"kernel_shape={list(ks)}, mode={mode!r}"
            )
        wb, chosen = prepared.packed, prepared.path
    else:
        wb, chosen = check_packed(packed_w, c, ks), _resolve(path)
    m = wb.shape[0]
    al = _vector(alpha, m, "alpha")
    bi = None if bias is None else _vector(bias, m, "bias")
    if chosen == REFERENCE:
        ref = xnor_conv_ref(
            x, wb, al, bi, kernel_shape=ks, strides=st, pads=pd, dilations=dl, mode=mode
        )
        if out is not None:
            _output(out, ref.shape)[...] = ref
            ref = out
        return ref, {}
    geom, y_shape = _geometry(x.shape, m, ks, st, pd, dl)
    y = _output(out, y_shape)
    tm = _Timing() if timed else None
    tm_ref = ctypes.byref(tm) if timed else None
    bias_ptr = None if bi is None else _addr(bi)
    if prepared is not None:
        rc = library().xnor_conv2d_prepared(
            prepared._handle,
            ctypes.byref(geom),
            _addr(x),
            x.size,
            _addr(al),
            bias_ptr,
            _addr(y),
            y.size,
            threads,
            tm_ref,
        )
    else:
        rc = library().xnor_conv2d(
            ctypes.byref(geom),
            OP_MODES.index(mode),
            _addr(x),
            x.size,
            _addr(wb),
            wb.nbytes // 8,
            _addr(al),
            bias_ptr,
            _addr(y),
            y.size,
            threads,
            PATHS.index(chosen),
            tm_ref,
        )
    if rc != 0:
        _fail(
            rc,
            f"input {list(x.shape)}, M={m}, kernel_shape={list(ks)}, strides={list(st)}, "
            f"pads={list(pd)}, dilations={list(dl)}, words per tap={words_per_tap(c)}",
        )
    return y, ({name: getattr(tm, name) for name, _ in _Timing._fields_} if timed else {})


def xnor_conv_timed(
    x: np.ndarray,
    packed_w: np.ndarray | XnorWeights,
    alpha: np.ndarray,
    bias: np.ndarray | None,
    **attrs: object,
) -> tuple[np.ndarray, dict[str, float]]:
    """``xnor_conv`` (same keywords) plus the C side's seconds per phase (empty for the
    reference): wall ``pack``, ``gemm``, ``total`` and the calling thread's CPU time ``*_cpu``."""
    return _conv(x, packed_w, alpha, bias, timed=True, **attrs)


def xnor_conv(
    x: np.ndarray,
    packed_w: np.ndarray | XnorWeights,
    alpha: np.ndarray,
    bias: np.ndarray | None,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    mode: str = "xnor",
    group: int = 1,
    threads: int = 1,
    path: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """XnorConv as specified in ``onnxcompress.ops``: float32 NCHW in, float32 NCHW out.

    ``packed_w`` is uint8 [M, KH*KW*ceil(C/64)*8] (or uint64 [M, KH*KW*ceil(C/64)]) from
    ``pack_weights``, or ``XnorWeights`` (then its path wins over ``path``).  ``out``, when
    given, receives the result: a runtime that reuses buffers avoids page faults on fresh ones.
    """
    return _conv(
        x,
        packed_w,
        alpha,
        bias,
        kernel_shape=kernel_shape,
        strides=strides,
        pads=pads,
        dilations=dilations,
        mode=mode,
        group=group,
        threads=threads,
        path=path,
        out=out,
    )[0]


def padded_k_bits(channels: int, kernel_shape: Sequence[int], path: str = "auto") -> int:
    """Bits per output the GEMM of ``path`` really computes: KH*KW*ceil(C/lane)*lane."""
    lane = _LANE_BITS[best_path() if path == "auto" else path]
    kh, kw = kernel_shape
    return kh * kw * -(-channels // lane) * lane
