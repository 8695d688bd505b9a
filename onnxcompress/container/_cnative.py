"""ctypes bindings to the container's C library (csrc/huffman.c, codebook.c, bitgroups.c, rans.c).

The library is plain C built by setup.py as `_native<EXT_SUFFIX>` beside this file. Each wrapper
takes and returns numpy arrays and turns the C return codes into `NativeError`; ctypes drops the
GIL during the calls, so large tensors can be decoded from several threads.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import OnnxCompressError

log = logging.getLogger(__name__)

_MESSAGES = {
    -1: "invalid Huffman code lengths",
    -2: "the bit stream ended early",
    -3: "a bit pattern that is no Huffman code",
    -4: "bytes left over after the last symbol",
    -5: "a symbol without a code (or the output buffer is too small)",
    -6: "unsupported element size",
    -7: "an index past the codebook or a position past the tensor",
    -8: "sizes that do not match the bit groups",
    -9: "invalid rANS frequency table (precision outside 1..15, or not summing to 2^precision)",
    -10: "the rANS state does not start within [2^23, 2^31) or does not end at 2^23",
    -11: "a symbol without a frequency",
    -12: "the output buffer is too small",
    -13: "out of memory",
}
_E_SPACE = -12

_u8p = ctypes.POINTER(ctypes.c_uint8)
_vp = ctypes.c_void_p
_sz = ctypes.c_size_t


class NativeError(OnnxCompressError):
    """The C library rejected its input; `code` is its (negative) return code."""

    def __init__(self, code: int, what: str):
        super().__init__(f"{what}: {_MESSAGES.get(code, f'error {code}')}")
        self.code = code


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """Load the shared library once; raise a clear error when it was never built."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_native{suffix}"
        if candidate.is_file():
            return _declare(ctypes.CDLL(str(candidate)))
    raise OnnxCompressError(
        f"the container's C library (_native*.so) is missing in {here}; "
        "build it with `pip install -e .` or `python setup.py build_ext --inplace`"
    )


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.ocx_huff_decode.argtypes = [_vp, ctypes.c_int, _vp, _sz, _vp, _sz]
    lib.ocx_huff_decode.restype = ctypes.c_int
    lib.ocx_huff_encode.argtypes = [_vp, ctypes.c_int, _vp, _sz, _vp, _sz]
    lib.ocx_huff_encode.restype = ctypes.c_int64
    lib.ocx_huff_codes.argtypes = [_vp, ctypes.c_int, _vp]
    lib.ocx_huff_codes.restype = ctypes.c_int
    lib.ocx_codebook_index.argtypes = [_vp, _sz, ctypes.c_int, ctypes.c_int, _vp, _vp]
    lib.ocx_codebook_index.restype = ctypes.c_int
    lib.ocx_codebook_gather.argtypes = [_vp, _sz, _vp, ctypes.c_int, ctypes.c_int, _vp]
    lib.ocx_codebook_gather.restype = ctypes.c_int
    lib.ocx_sparse_decode.argtypes = [
        _vp, ctypes.c_int, _vp, _sz,  # gap stream: lengths, alphabet, payload, bytes
        _vp, ctypes.c_int, _vp, _sz,  # value stream
        _sz, ctypes.c_int, _vp, ctypes.c_int, ctypes.c_int, _vp, _sz,
    ]
    lib.ocx_sparse_decode.restype = ctypes.c_int
    lib.ocx_bitgroups_expand.argtypes = [_vp, _sz, ctypes.c_uint32, ctypes.c_uint32,
                                         ctypes.c_uint64, _vp, _sz]
    lib.ocx_bitgroups_expand.restype = ctypes.c_int
    lib.ocx_rans_encode.argtypes = [_vp, ctypes.c_int, ctypes.c_int, _vp, _sz, _vp, _sz]
    lib.ocx_rans_encode.restype = ctypes.c_int64
    lib.ocx_rans_decode.argtypes = [_vp, ctypes.c_int, ctypes.c_int, _vp, _sz, _vp, _sz]
    lib.ocx_rans_decode.restype = ctypes.c_int
    lib.ocx_rans_sparse_encode.argtypes = [
        _vp, _vp, _sz, ctypes.c_int, ctypes.c_int,  # entries: gaps, values, count; width, filler
        _vp, ctypes.c_int, ctypes.c_int,  # gap model: frequencies, alphabet, precision
        _vp, ctypes.c_int, ctypes.c_int,  # value model
        _vp, _sz, _vp, _sz, _vp,  # gap output, value output, their two lengths
    ]
    lib.ocx_rans_sparse_encode.restype = ctypes.c_int
    lib.ocx_rans_sparse_decode.argtypes = [
        _vp, ctypes.c_int, ctypes.c_int, _vp, _sz,  # gap stream: model, payload
        _vp, ctypes.c_int, ctypes.c_int, _vp, _sz,  # value stream
        _sz, ctypes.c_int, _vp, ctypes.c_int, ctypes.c_int, _vp, _sz,
    ]
    lib.ocx_rans_sparse_decode.restype = ctypes.c_int
    return lib


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _lengths(lengths: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(lengths, dtype=np.uint8)


def huff_decode(lengths: np.ndarray, data: bytes | memoryview | np.ndarray, n: int) -> np.ndarray:
    """Decode n uint8 symbols from a canonical Huffman bit stream."""
    lens = _lengths(lengths)
    src = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(n, dtype=np.uint8)
    rc = library().ocx_huff_decode(_ptr(lens), lens.size, _ptr(src), src.size, _ptr(out), n)
    if rc:
        raise NativeError(rc, "Huffman decode")
    return out


def huff_encode(lengths: np.ndarray, symbols: np.ndarray, nbytes: int) -> bytes:
    """Encode uint8 symbols; nbytes is the exact output size the caller computed."""
    lens = _lengths(lengths)
    sym = np.ascontiguousarray(symbols, dtype=np.uint8)
    out = np.empty(max(nbytes, 1), dtype=np.uint8)
    rc = library().ocx_huff_encode(_ptr(lens), lens.size, _ptr(sym), sym.size, _ptr(out), nbytes)
    if rc < 0:
        raise NativeError(int(rc), "Huffman encode")
    if rc != nbytes:
        raise NativeError(-5, f"Huffman encode wrote {rc} bytes, expected {nbytes}")
    return out[:nbytes].tobytes()


def huff_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of each symbol (right-aligned), from the lengths alone."""
    lens = _lengths(lengths)
    codes = np.zeros(lens.size, dtype=np.uint16)
    rc = library().ocx_huff_codes(_ptr(lens), lens.size, _ptr(codes))
    if rc:
        raise NativeError(rc, "Huffman code table")
    return codes


def codebook_index(elements: np.ndarray, max_k: int = 256) -> tuple[np.ndarray, np.ndarray] | None:
    """(codebook in first-appearance order, uint8 index per element), or None if > max_k values."""
    flat = np.ascontiguousarray(elements).reshape(-1)
    book = np.zeros(256, dtype=np.uint64)
    idx = np.empty(flat.size, dtype=np.uint8)
    k = library().ocx_codebook_index(
        _ptr(flat), flat.size, flat.itemsize, max_k, _ptr(book), _ptr(idx)
    )
    if k == -1:
        return None
    if k < 0:
        raise NativeError(k, "codebook index")
    return book[:k].astype(flat.dtype), idx


def codebook_gather(idx: np.ndarray, book: np.ndarray, out: np.ndarray) -> None:
    """out[i] = book[idx[i]] (book and out share one unsigned dtype; with 1-byte elements out
    may be idx itself)."""
    book = np.ascontiguousarray(book)
    rc = library().ocx_codebook_gather(
        _ptr(idx), idx.size, _ptr(book), book.size, book.itemsize, _ptr(out)
    )
    if rc:
        raise NativeError(rc, "codebook gather")


def sparse_decode(
    gap_lengths: np.ndarray,
    gap_payload: bytes | memoryview,
    val_lengths: np.ndarray,
    val_payload: bytes | memoryview,
    m: int,
    filler: int,
    book: np.ndarray,
    out: np.ndarray,
) -> None:
    """Decode the m (gap, value) entries of the sparse form straight from their two Huffman
    streams into `out`, which must hold the fill value (no gap or value array is built)."""
    gl, vl = _lengths(gap_lengths), _lengths(val_lengths)
    gs, vs = np.frombuffer(gap_payload, np.uint8), np.frombuffer(val_payload, np.uint8)
    book = np.ascontiguousarray(book)
    rc = library().ocx_sparse_decode(
        _ptr(gl), gl.size, _ptr(gs), gs.size,
        _ptr(vl), vl.size, _ptr(vs), vs.size,
        m, filler, _ptr(book), book.size, out.itemsize, _ptr(out), out.size,
    )
    if rc:
        raise NativeError(rc, "sparse decode")


def bitgroups_expand(kept: np.ndarray, keep: int, group_bits: int, groups: int,
                     out: np.ndarray) -> None:
    """Write the kept low bits of each group into `out` (uint8, zeros beforehand)."""
    rc = library().ocx_bitgroups_expand(
        _ptr(kept), kept.size, keep, group_bits, groups, _ptr(out), out.size
    )
    if rc:
        raise NativeError(rc, "bitgroups expand")


def _freqs(freqs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(freqs, dtype=np.uint32)


def rans_encode(freqs: np.ndarray, precision: int, symbols: np.ndarray, cap: int) -> bytes:
    """rANS payload of uint8 symbols. `cap` is a bound the caller proved (rans.Model.capacity);
    should it ever be short, the encoder is run again with room for its worst case, 2 bytes a
    symbol, rather than failing a write."""
    f = _freqs(freqs)
    sym = np.ascontiguousarray(symbols, dtype=np.uint8).reshape(-1)
    for size in (cap, 4 + 2 * sym.size):
        out = np.empty(size, dtype=np.uint8)
        rc = library().ocx_rans_encode(_ptr(f), f.size, precision, _ptr(sym), sym.size,
                                       _ptr(out), out.size)
        if rc != _E_SPACE:
            break
    if rc < 0:
        raise NativeError(int(rc), "rANS encode")
    return out[:rc].tobytes()


def rans_decode(freqs: np.ndarray, precision: int, data: bytes | memoryview, n: int
                ) -> np.ndarray:
    """Decode n >= 1 uint8 symbols from a rANS payload."""
    f = _freqs(freqs)
    src = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(n, dtype=np.uint8)
    rc = library().ocx_rans_decode(_ptr(f), f.size, precision, _ptr(src), src.size, _ptr(out), n)
    if rc:
        raise NativeError(rc, "rANS decode")
    return out


def rans_sparse_encode(gaps: np.ndarray, vals: np.ndarray, gap_bits: int, filler: int,
                       gap_model: tuple[np.ndarray, int, int],
                       val_model: tuple[np.ndarray, int, int]) -> tuple[bytes, bytes]:
    """(gap payload, value payload) of the sparse form at `gap_bits` from its entries (uint32
    fill run before each non-fill element, its value symbol). Each model is (frequencies,
    precision, capacity); the worst case (2 bytes a symbol) is the fallback, as in rans_encode."""
    g = np.ascontiguousarray(gaps, dtype=np.uint32)
    v = np.ascontiguousarray(vals, dtype=np.uint8)
    gf, vf = _freqs(gap_model[0]), _freqs(val_model[0])
    lens = np.zeros(2, dtype=np.uint64)
    for attempt in range(2):
        gcap, vcap = gap_model[2], val_model[2]
        if attempt:  # every entry and filler is one symbol of each stream
            gcap = vcap = 4 + 2 * (g.size + int((g >> np.uint32(gap_bits)).sum()))
        gout, vout = np.empty(gcap, dtype=np.uint8), np.empty(vcap, dtype=np.uint8)
        rc = library().ocx_rans_sparse_encode(
            _ptr(g), _ptr(v), g.size, gap_bits, filler,
            _ptr(gf), gf.size, gap_model[1], _ptr(vf), vf.size, val_model[1],
            _ptr(gout), gout.size, _ptr(vout), vout.size, _ptr(lens),
        )
        if rc != _E_SPACE:
            break
    if rc:
        raise NativeError(rc, "rANS sparse encode")
    return gout[: int(lens[0])].tobytes(), vout[: int(lens[1])].tobytes()


def rans_sparse_decode(
    gap_model: tuple[np.ndarray, int],
    gap_payload: bytes | memoryview,
    val_model: tuple[np.ndarray, int],
    val_payload: bytes | memoryview,
    m: int,
    filler: int,
    book: np.ndarray,
    out: np.ndarray,
) -> None:
    """sparse_decode from two rANS streams, each model (frequencies, precision)."""
    gf, vf = _freqs(gap_model[0]), _freqs(val_model[0])
    gs, vs = np.frombuffer(gap_payload, np.uint8), np.frombuffer(val_payload, np.uint8)
    book = np.ascontiguousarray(book)
    rc = library().ocx_rans_sparse_decode(
        _ptr(gf), gf.size, gap_model[1], _ptr(gs), gs.size,
        _ptr(vf), vf.size, val_model[1], _ptr(vs), vs.size,
        m, filler, _ptr(book), book.size, out.itemsize, _ptr(out), out.size,
    )
    if rc:
        raise NativeError(rc, "rANS sparse decode")
