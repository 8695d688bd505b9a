"""Per-tensor codecs of the container: each is an encode/decode pair over raw element bytes.

- raw: the bytes stored, zlib- or LZMA-compressed (biases, shapes, unclustered weights);
- codebook: at most 256 distinct element bit patterns, stored once, plus a Huffman-coded index
  per element; bit patterns, not float values, are compared, so -0.0 and NaN payloads survive;
- sparse: Deep Compression's relative-index form (Han et al., "Deep Compression", ICLR 2016,
  section 4). The most frequent value (the pruned zero, or a dominant cluster index) is the fill
  and stays out of the codebook; every other element is an entry (gap, value) where gap counts the
  fill elements since the previous entry in `gap_bits` bits (8 for conv, 5 for fc in the paper).
  A gap too long for `gap_bits` is bridged with filler entries (gap = 2^gap_bits - 1, value = the
  reserved symbol K, where K is the codebook size), which occupy a fill element. The gap and value
  streams are Huffman-coded separately.
- bitgroups: bit-packed data made of equal groups whose high bits are all 0, as XnorConv's weight
  bits are (each tap's channel bits padded to whole 64-bit words): only the low `keep` bits of
  each group are stored, so a binarized layer costs 1 bit per weight whatever its channel count.
  Offered only for tensors the writer names with their group size, and only when exact.

The writer computes the exact size of each candidate from histograms (no trial encoding of the
Huffman codecs) and keeps the smallest; docs/FORMAT.md gives the byte layouts.
"""

from __future__ import annotations

import logging
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _cnative, huffman
from .format import Codec, Cursor, PayloadError
from .inflate import inflate

log = logging.getLogger(__name__)

LZMA_MAX_BYTES = 1 << 20  # LZMA (slow to write) is tried on tensors up to this size
FULL_RAW_MAX_BYTES = 16 << 20  # above this, raw zlib is first tried on a sample
SAMPLE_BYTES = 1 << 20
SPARSE_MIN_FILL = 0.5  # the sparse form is considered when the fill value is >= half the tensor
ELEMENT_SIZES = (1, 2, 4, 8)
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class Encoded:
    """One encoded tensor payload and what it cost."""

    codec: Codec
    payload: bytes
    n_symbols: int = 0  # Huffman-coded symbols (both streams for sparse)
    coded_bits: int = 0  # their payload bits
    entropy_bits: float | None = None  # their empirical entropy bound; None for raw codecs


@dataclass(frozen=True)
class _Candidate:
    codec: Codec
    nbytes: int
    build: Callable[[], Encoded]  # encodes for real; only the winner is built


# ----------------------------------------------------------------------------- encoding


def encode(data: bytes | memoryview, elem_size: int, gap_bits: int | None = None,
           group_bits: int | None = None) -> Encoded:
    """Encode raw little-endian tensor bytes (or a byte memoryview of an array: no copy) with
    the smallest applicable codec.

    elem_size is the element width in bytes; codebook codecs need 1, 2, 4 or 8 and a whole number
    of elements, anything else is stored raw.  gap_bits pins the sparse form's gap width (None:
    the width that makes the section smallest).  group_bits, when given, offers the bitgroups
    codec (the data is groups of that many bits, padding in the high bits).
    """
    if gap_bits is not None and not 1 <= gap_bits <= 8:
        raise ValueError(f"gap_bits must be within 1..8, got {gap_bits}")
    candidates: list[_Candidate] = []
    if group_bits:
        candidates += _bitgroup_candidates(data, group_bits)
    if elem_size in ELEMENT_SIZES and len(data) % elem_size == 0 and data:
        elements = np.frombuffer(data, dtype=_UNSIGNED[elem_size])
        candidates += _codebook_candidates(elements, gap_bits)
    best_coded = min((c.nbytes for c in candidates), default=None)
    candidates += _raw_candidates(data, best_coded)
    best = min(candidates, key=lambda c: (c.nbytes, c.codec))
    out = best.build()
    if len(out.payload) != best.nbytes:
        raise AssertionError(
            f"{best.codec.name}: planned {best.nbytes} bytes, wrote {len(out.payload)}"
        )
    return out


def _raw_candidates(data: bytes | memoryview, best_coded: int | None) -> list[_Candidate]:
    """Stored always; zlib unless a sample shows a codebook codec wins clearly; small LZMA."""
    size = struct.pack("<Q", len(data))
    out = [_Candidate(Codec.STORED, 8 + len(data), lambda: Encoded(Codec.STORED, size + bytes(data)))]
    if not data:
        return out
    if best_coded is not None and len(data) > FULL_RAW_MAX_BYTES:
        sample = data[:SAMPLE_BYTES]
        rate = len(zlib.compress(sample, 6)) / len(sample)
        if rate * len(data) > best_coded:
            return out
    level = 9 if len(data) <= SAMPLE_BYTES else 6
    z = size + zlib.compress(data, level)
    out.append(_Candidate(Codec.ZLIB, len(z), lambda: Encoded(Codec.ZLIB, z)))
    if len(data) <= LZMA_MAX_BYTES:
        x = size + lzma.compress(data, format=lzma.FORMAT_ALONE, preset=9)
        out.append(_Candidate(Codec.LZMA, len(x), lambda: Encoded(Codec.LZMA, x)))
    return out


def _codebook_candidates(elements: np.ndarray, gap_bits: int | None) -> list[_Candidate]:
    found = _cnative.codebook_index(elements)
    return [] if found is None else _index_candidates(elements.size, *found, gap_bits)


def _index_candidates(n: int, book: np.ndarray, idx: np.ndarray, gap_bits: int | None
                      ) -> list[_Candidate]:
    """The codebook and (when the fill is common enough) sparse forms of book[idx]."""
    counts = huffman.histogram(idx, minlength=book.size)
    dense = huffman.plan(counts)
    head = 1 + 2 + book.nbytes
    out = [
        _Candidate(Codec.CODEBOOK, head + dense.nbytes, lambda: _encode_codebook(book, idx, dense))
    ]
    fill = int(np.argmax(counts))
    if counts[fill] >= SPARSE_MIN_FILL * n:
        widths = GAP_WIDTHS if gap_bits is None else (gap_bits,)
        gap_hist, long_gaps = gap_histogram(idx, fill)
        values = np.delete(counts[: book.size], fill)
        width, pg, pv = min((_sparse_plan(gap_hist, long_gaps, values, w) for w in widths),
                            key=lambda plan: plan[1].nbytes + plan[2].nbytes)
        nz_book = np.delete(book, fill)
        size = 1 + 1 + 8 + book.itemsize + 2 + nz_book.nbytes + pg.nbytes + pv.nbytes

        def build() -> Encoded:
            gaps, vals, _ = sparse_entries(idx, book, fill, width)
            return _encode_sparse(n, book[fill], width, nz_book, gaps, vals, pg, pv)

        out.append(_Candidate(Codec.SPARSE, size, build))
    return out


GAP_WIDTHS = tuple(range(1, 9))  # the sparse form's gap widths (bits) a writer may choose
SHORT_GAPS = 256  # gaps below this are counted in a histogram; longer ones kept as they are


def gap_histogram(idx: np.ndarray, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """The fill elements before each non-fill element of `idx`, as a histogram of the gaps
    below SHORT_GAPS and an array of the longer ones: enough to price every gap width."""
    pos = np.flatnonzero(idx.reshape(-1) != fill)
    gap = np.diff(pos, prepend=-1) - 1
    return np.bincount(gap[gap < SHORT_GAPS], minlength=SHORT_GAPS), gap[gap >= SHORT_GAPS]


def fill_gaps(gap_hist: np.ndarray, long_gaps: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """(histogram of the gap stream, filler entries) at `width` bits: a gap g is g >> width
    fillers of gap 2^width - 1 then an entry of gap g mod 2^width (see sparse_entries)."""
    step = 1 << width
    g = np.arange(gap_hist.size)
    counts = np.bincount(g & (step - 1), weights=gap_hist, minlength=step).astype(np.int64)
    counts += np.bincount(long_gaps & (step - 1), minlength=step)
    fillers = int(np.dot(gap_hist, g >> width)) + int((long_gaps >> width).sum())
    counts[step - 1] += fillers
    return counts, fillers


def _sparse_plan(gap_hist: np.ndarray, long_gaps: np.ndarray, values: np.ndarray, width: int
                 ) -> tuple[int, huffman.StreamPlan, huffman.StreamPlan]:
    """(width, gap stream plan, value stream plan) of the sparse form at `width`; `values`
    counts the codebook symbols without the fill (the filler symbol K comes after them)."""
    gap_counts, fillers = fill_gaps(gap_hist, long_gaps, width)
    return width, huffman.plan(gap_counts), huffman.plan(np.append(values, fillers))


def coded_size(book: np.ndarray, idx: np.ndarray, gap_bits: int | None = None) -> int:
    """Payload bytes the writer would spend on book[idx] (≤ 256 entries) with the best of the
    codebook and sparse codecs, planned from histograms (nothing is encoded): what a search
    needs to price a setting without writing a container."""
    idx = idx.reshape(-1)
    return min(c.nbytes for c in _index_candidates(idx.size, book, idx, gap_bits))


def sparse_entries(
    idx: np.ndarray, book: np.ndarray, fill: int, gap_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gap stream, value stream, codebook without the fill) of Deep Compression's sparse form.

    Value symbols index the codebook without the fill; symbol K = len(that codebook) marks a
    filler entry, inserted wherever a gap exceeds 2^gap_bits - 1.
    """
    # int32 positions and in-place steps: on a 100 M-element layer each int64 temporary of
    # the entries is 80 MB
    max_gap = (1 << gap_bits) - 1
    pos = np.flatnonzero(idx != fill)
    if idx.size < 2**31 - 1:
        pos = pos.astype(np.int32)
    sym = idx[pos]
    sym = (sym - (sym > fill)).astype(np.uint8)  # drop the fill from the codebook
    nz_book = np.delete(book, fill)
    gap = np.diff(pos, prepend=pos.dtype.type(-1))
    del pos
    gap -= 1
    fillers = gap >> gap_bits  # filler entries before each real one: gap // (max_gap + 1)
    if not fillers.any():
        return gap.astype(np.uint8), sym, nz_book
    fillers += 1
    last = np.cumsum(fillers, out=fillers)  # where each real entry lands after its fillers
    last -= 1
    gaps = np.full(int(last[-1]) + 1, max_gap, dtype=np.uint8)
    vals = np.full(gaps.size, nz_book.size, dtype=np.uint8)
    gaps[last] = gap & max_gap
    vals[last] = sym
    return gaps, vals, nz_book


def _encode_codebook(book: np.ndarray, idx: np.ndarray, p: huffman.StreamPlan) -> Encoded:
    payload = (
        struct.pack("<BH", book.itemsize, book.size) + _le_bytes(book) + huffman.encode(idx, p)
    )
    return Encoded(Codec.CODEBOOK, payload, p.n, p.bits, p.entropy_bits)


def _encode_sparse(
    n: int,
    fill: np.generic,
    gap_bits: int,
    nz_book: np.ndarray,
    gaps: np.ndarray,
    vals: np.ndarray,
    pg: huffman.StreamPlan,
    pv: huffman.StreamPlan,
) -> Encoded:
    payload = b"".join(
        [
            struct.pack("<BBQ", nz_book.itemsize, gap_bits, n),
            _le_bytes(np.array([fill], dtype=nz_book.dtype)),
            struct.pack("<H", nz_book.size),
            _le_bytes(nz_book),
            huffman.encode(gaps, pg),
            huffman.encode(vals, pv),
        ]
    )
    return Encoded(
        Codec.SPARSE, payload, pg.n + pv.n, pg.bits + pv.bits, pg.entropy_bits + pv.entropy_bits
    )


BITGROUPS_HEAD = struct.Struct("<IIQ")  # keep, group_bits, groups


def _bitgroup_candidates(data: bytes | memoryview, group_bits: int) -> list[_Candidate]:
    """The bitgroups form when `data` is whole groups; keep = 1 + the highest bit set in any
    group, so the bits left out are all 0 and decoding restores the bytes exactly."""
    if group_bits < 1 or group_bits >= 1 << 32 or not data or (8 * len(data)) % group_bits:
        return []
    groups = 8 * len(data) // group_bits
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    bits = bits.reshape(groups, group_bits)
    used = np.flatnonzero(bits.any(axis=0))
    keep = int(used[-1]) + 1 if used.size else 0
    if keep == group_bits:
        return []
    size = BITGROUPS_HEAD.size + (keep * groups + 7) // 8

    def build() -> Encoded:
        kept = np.packbits(bits[:, :keep].reshape(-1), bitorder="little")
        return Encoded(Codec.BITGROUPS, BITGROUPS_HEAD.pack(keep, group_bits, groups) + kept.tobytes())

    return [_Candidate(Codec.BITGROUPS, size, build)]


def _le_bytes(a: np.ndarray) -> bytes:
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


# ----------------------------------------------------------------------------- decoding


def decode(codec: Codec, buf: memoryview, nbytes: int, elem_size: int | None = None) -> np.ndarray:
    """Decode a payload into a flat array of exactly `nbytes` bytes: uint8 for raw codecs, the
    element width otherwise.

    `nbytes` is the size the tensor's dims and type declare and `elem_size` its element width
    (None when it has none of 1, 2, 4, 8 bytes). Every count a payload states is checked against
    them before anything is allocated, and decompression stops at `nbytes`: a small section cannot
    claim more memory than the tensor it decodes to (about 1x; 2x for the codebook codec on
    elements wider than a byte, index plus values)."""
    cur = Cursor(buf)
    if codec in (Codec.STORED, Codec.ZLIB, Codec.LZMA):
        return _decode_raw(codec, cur, nbytes)
    if codec in (Codec.CODEBOOK, Codec.SPARSE):
        e = _element_size(cur)
        if e != elem_size:
            raise PayloadError(
                f"elements of {e} bytes, the tensor's type has {elem_size or 'other'}-byte ones"
            )
        decoder = _decode_codebook if codec == Codec.CODEBOOK else _decode_sparse
        return decoder(cur, e, nbytes // e)
    if codec == Codec.BITGROUPS:
        return _decode_bitgroups(cur, nbytes)
    raise PayloadError(f"unknown tensor codec {int(codec)}")


def _decode_raw(codec: Codec, cur: Cursor, nbytes: int) -> np.ndarray:
    n = cur.u64()
    if n != nbytes:
        raise PayloadError(f"raw payload of {n} bytes, the tensor's dims declare {nbytes}")
    body = cur.take(len(cur.buf) - cur.pos)
    data = body if codec == Codec.STORED else inflate(codec, body, n, exact=True)
    if len(data) != n:
        raise PayloadError(f"raw payload holds {len(data)} bytes, its header says {n}")
    return np.frombuffer(data, dtype=np.uint8)


def _read_book(cur: Cursor, elem_size: int) -> np.ndarray:
    k = cur.u16()
    if k > 256:
        raise PayloadError(f"codebook of {k} entries, at most 256 allowed")
    return np.frombuffer(cur.take(k * elem_size), dtype=_UNSIGNED[elem_size])


def _element_size(cur: Cursor) -> int:
    e = cur.u8()
    if e not in ELEMENT_SIZES:
        raise PayloadError(f"element size {e}, expected one of {ELEMENT_SIZES}")
    return e


def _decode_codebook(cur: Cursor, e: int, count: int) -> np.ndarray:
    book = _read_book(cur, e)
    idx = huffman.decode(cur, max_alphabet=book.size, count=count)
    cur.done()
    # 1-byte elements are looked up in place: the indices become the tensor, no second array
    out = idx if e == 1 else np.empty(idx.size, dtype=book.dtype)
    _native_call(_cnative.codebook_gather, idx, book, out)
    return out


def _decode_sparse(cur: Cursor, e: int, count: int) -> np.ndarray:
    gap_bits = cur.u8()
    if not 1 <= gap_bits <= 8:
        raise PayloadError(f"gap_bits {gap_bits}, expected 1..8")
    n = cur.u64()
    if n != count:
        raise PayloadError(f"sparse payload of {n} elements, the tensor's dims declare {count}")
    fill = np.frombuffer(cur.take(e), dtype=_UNSIGNED[e])[0]
    book = _read_book(cur, e)
    if book.size > 255:
        raise PayloadError(f"sparse codebook of {book.size} entries, at most 255 allowed")
    # every entry occupies an element: at most n of them
    m, gap_lengths, gap_payload = huffman.read_header(cur, 1 << gap_bits, max_symbols=n)
    m_vals, val_lengths, val_payload = huffman.read_header(cur, book.size + 1, max_symbols=n)
    cur.done()
    if m != m_vals:
        raise PayloadError(f"{m} gaps but {m_vals} values")
    out = np.zeros(n, dtype=book.dtype) if fill == 0 else np.full(n, fill, dtype=book.dtype)
    _native_call(
        _cnative.sparse_decode,
        gap_lengths, gap_payload, val_lengths, val_payload, m, book.size, book, out,
    )
    return out


def _decode_bitgroups(cur: Cursor, nbytes: int) -> np.ndarray:
    keep, group_bits, groups = cur.u32(), cur.u32(), cur.u64()
    if not 0 <= keep <= group_bits or group_bits == 0 or (groups * group_bits) % 8:
        raise PayloadError(f"bitgroups of {groups} x {group_bits} bits keeping {keep}: invalid")
    if groups * group_bits != 8 * nbytes:
        raise PayloadError(
            f"bitgroups of {groups} x {group_bits} bits, the tensor's dims declare {nbytes} bytes"
        )
    kept = np.frombuffer(cur.take((keep * groups + 7) // 8), np.uint8)
    cur.done()
    out = np.zeros(nbytes, np.uint8)
    _native_call(_cnative.bitgroups_expand, kept, keep, group_bits, groups, out)
    return out


def _native_call(fn, *args) -> None:
    try:
        fn(*args)
    except _cnative.NativeError as e:
        raise PayloadError(str(e)) from e
