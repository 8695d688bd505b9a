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
  streams are Huffman-coded separately (sparse.py builds them);
- codebook-rans and sparse-rans: the same two forms with rANS streams (rans.py) in place of the
  Huffman ones, within about 0.05% of the entropy where Huffman's whole bits lose 0.5-3%;
- bitgroups: bit-packed data made of equal groups whose high bits are all 0, as XnorConv's weight
  bits are (each tap's channel bits padded to whole 64-bit words): only the low `keep` bits of
  each group are stored, so a binarized layer costs 1 bit per weight whatever its channel count.
  Offered only for tensors the writer names with their group size, and only when exact.

The writer computes the exact size of each candidate and keeps the smallest (ties to the lower
codec id, so Huffman wins ties): Huffman sizes from histograms, rANS sizes by encoding in C (a
stream's length depends on its order, not its histogram alone); docs/FORMAT.md gives the layouts.
"""

from __future__ import annotations

import logging
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _cnative, huffman, rans
from .format import Codec, Cursor, PayloadError
from .inflate import inflate
from .sparse import GAP_WIDTHS, entry_gaps, fill_gaps, gap_histogram, sparse_entries

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
    n_symbols: int = 0  # entropy-coded symbols (both streams for sparse)
    coded_bits: int = 0  # their payload bits
    entropy_bits: float | None = None  # their empirical entropy bound; None for raw codecs


@dataclass(frozen=True)
class _Candidate:
    codec: Codec
    nbytes: int
    build: Callable[[], Encoded]  # encodes for real; only the winner is built


@dataclass(frozen=True)
class _Pending:
    """A candidate whose exact size is known only once encoded (the rANS forms), with a proven
    lower bound on it (rans.payload_bounds)."""

    codec: Codec
    least: int
    price: Callable[[tuple[int, Codec]], _Candidate | None]  # given the (size, codec) to beat


def _settle(found: list[_Candidate], pending: list[_Pending], price_all: bool = False
            ) -> list[_Candidate]:
    """Price the pending candidates that could still win (smaller, or as small with a lower
    codec id), the most promising first: skipping the others cannot change the choice.
    price_all (for tests) prices every one, each at its own best."""
    for p in sorted(pending, key=lambda p: (p.least, p.codec)):
        beat = (1 << 62, Codec.SPARSE_RANS + 1) if price_all else min(
            (c.nbytes, c.codec) for c in found)
        if (p.least, p.codec) < beat and (priced := p.price(beat)) is not None:
            found.append(priced)
    return found


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
        x = size + lzma_alone(data)
        out.append(_Candidate(Codec.LZMA, len(x), lambda: Encoded(Codec.LZMA, x)))
    return out


def lzma_alone(data: bytes | memoryview) -> bytes:
    """An LZMA-alone stream of `data` at preset 9, with a dictionary no larger than the data
    needs: the preset's 64 MiB one costs 50 ms to set up, also for a 1 KB bias, and a
    dictionary that holds the whole input finds the same matches."""
    dict_size = max(4096, 1 << max(0, len(data) - 1).bit_length())
    filters = [{"id": lzma.FILTER_LZMA1, "preset": 9, "dict_size": min(dict_size, 64 << 20)}]
    return lzma.compress(data, format=lzma.FORMAT_ALONE, filters=filters)


def _codebook_candidates(elements: np.ndarray, gap_bits: int | None) -> list[_Candidate]:
    found = _cnative.codebook_index(elements)
    return [] if found is None else _index_candidates(elements.size, *found, gap_bits)


def _index_candidates(n: int, book: np.ndarray, idx: np.ndarray, gap_bits: int | None,
                      price_all: bool = False) -> list[_Candidate]:
    """The codebook and (when the fill is common enough) sparse forms of book[idx], each with
    Huffman and with rANS streams (those only where they could win)."""
    counts = huffman.histogram(idx, minlength=book.size)
    dense = huffman.plan(counts)
    head = 1 + 2 + book.nbytes
    found = [
        _Candidate(Codec.CODEBOOK, head + dense.nbytes, lambda: _encode_codebook(book, idx, dense))
    ]
    pending = [_rans_codebook(book, idx, counts)]
    fill = int(np.argmax(counts))
    if counts[fill] >= SPARSE_MIN_FILL * n:
        gaps, syms = entry_gaps(idx, fill)
        gap_hist, long_gaps = gap_histogram(gaps)
        values = np.delete(counts[: book.size], fill)
        widths = GAP_WIDTHS if gap_bits is None else (gap_bits,)
        nz_book = np.delete(book, fill)
        sparse_head = _sparse_head(n, book[fill], 0, nz_book)  # gap_bits is set when written
        width, pg, pv = min((_sparse_plan(gap_hist, long_gaps, values, w) for w in widths),
                            key=lambda plan: plan[1].nbytes + plan[2].nbytes)

        def build() -> Encoded:
            gap_stream, val_stream, _ = sparse_entries(idx, book, fill, width)
            return _encode_sparse(sparse_head, width, gap_stream, val_stream, pg, pv)

        found.append(_Candidate(Codec.SPARSE, len(sparse_head) + pg.nbytes + pv.nbytes, build))
        if n < 1 << 32:  # the C encoder takes the gaps as uint32
            models = {}
            for w in widths:
                models[w] = _rans_sparse_models(gap_hist, long_gaps, values, w)
                if models[w][1].freqs.size <= nz_book.size:  # no filler: every wider width
                    break  # has these very streams, and ties go to the narrower width
            pending.append(_rans_sparse(sparse_head, gaps, syms, nz_book.size, models))
    return _settle(found, pending, price_all)


def _sparse_plan(gap_hist: np.ndarray, long_gaps: np.ndarray, values: np.ndarray, width: int
                 ) -> tuple[int, huffman.StreamPlan, huffman.StreamPlan]:
    """(width, gap stream plan, value stream plan) of the sparse form at `width`; `values`
    counts the codebook symbols without the fill (the filler symbol K comes after them)."""
    gap_counts, fillers = fill_gaps(gap_hist, long_gaps, width)
    return width, huffman.plan(gap_counts), huffman.plan(np.append(values, fillers))


def _rans_sparse_models(gap_hist: np.ndarray, long_gaps: np.ndarray, values: np.ndarray,
                        width: int) -> tuple[rans.Model, rans.Model]:
    """The gap and value stream models of the sparse form at `width` (as _sparse_plan)."""
    gap_counts, fillers = fill_gaps(gap_hist, long_gaps, width)
    return rans.plan(gap_counts), rans.plan(np.append(values, fillers))


def _rans_sparse(head: bytes, gaps: np.ndarray, syms: np.ndarray, filler: int,
                 models: dict[int, tuple[rans.Model, rans.Model]]) -> _Pending:
    """The sparse form with rANS streams at the width that makes it smallest (ties to the
    narrower one). A width's exact size needs its streams encoded (in C, straight from the
    entries), but rans.payload_bounds brackets it from the frequencies: only the widths whose
    least size could beat the best exact one so far are encoded, the most promising first.
    The result is the exact minimum all the same."""
    least = {w: len(head) + sum(m.size_bounds()[0] for m in ms) for w, ms in models.items()}

    def price(beat: tuple[int, Codec]) -> _Candidate | None:
        best: tuple[int, int, Encoded] | None = None  # (size, width, section)
        # int32 gaps are never negative: their bits are the uint32 ones, no copy
        entries = gaps.view(np.uint32) if gaps.dtype == np.int32 else gaps.astype(np.uint32)
        for w in sorted(models, key=least.__getitem__):
            if (least[w], Codec.SPARSE_RANS) >= beat or (best and (least[w], w) > best[:2]):
                continue  # cannot win, nor tie with a lower codec id or a narrower width
            gm, vm = models[w]
            gp, vp = rans.sparse_payloads(entries, syms, w, filler, gm, vm)
            body = _with_width(head, w) + rans.stream(gm, gp) + rans.stream(vm, vp)
            if best is None or (len(body), w) < best[:2]:
                enc = Encoded(Codec.SPARSE_RANS, body, gm.n + vm.n, 8 * (len(gp) + len(vp)),
                              gm.entropy_bits + vm.entropy_bits)
                best = (len(body), w, enc)
        if best is None:
            return None
        enc = best[2]
        return _Candidate(Codec.SPARSE_RANS, len(enc.payload), lambda: enc)

    return _Pending(Codec.SPARSE_RANS, min(least.values()), price)


def _rans_codebook(book: np.ndarray, idx: np.ndarray, counts: np.ndarray) -> _Pending:
    """The codebook form with an rANS stream (its exact size needs the encoder)."""
    model = rans.plan(counts)
    head = struct.pack("<BH", book.itemsize, book.size) + _le_bytes(book)

    def price(_beat: tuple[int, Codec]) -> _Candidate:
        payload = rans.encode_payload(idx, model)
        body = head + rans.stream(model, payload)
        enc = Encoded(Codec.CODEBOOK_RANS, body, model.n, 8 * len(payload), model.entropy_bits)
        return _Candidate(Codec.CODEBOOK_RANS, len(body), lambda: enc)

    return _Pending(Codec.CODEBOOK_RANS, len(head) + model.size_bounds()[0], price)


def coded_size(book: np.ndarray, idx: np.ndarray, gap_bits: int | None = None) -> int:
    """Payload bytes the writer would spend on book[idx] (≤ 256 entries) with the best of the
    codebook and sparse codecs, Huffman or rANS (Huffman planned from histograms, rANS encoded
    in C): what a search needs to price a setting without writing a container."""
    idx = idx.reshape(-1)
    return min(c.nbytes for c in _index_candidates(idx.size, book, idx, gap_bits))


def _encode_codebook(book: np.ndarray, idx: np.ndarray, p: huffman.StreamPlan) -> Encoded:
    payload = (
        struct.pack("<BH", book.itemsize, book.size) + _le_bytes(book) + huffman.encode(idx, p)
    )
    return Encoded(Codec.CODEBOOK, payload, p.n, p.bits, p.entropy_bits)


def _sparse_head(n: int, fill: np.generic, gap_bits: int, nz_book: np.ndarray) -> bytes:
    """The sparse form's fields before its two streams (the same for Huffman and rANS)."""
    return b"".join([
        struct.pack("<BBQ", nz_book.itemsize, gap_bits, n),
        _le_bytes(np.array([fill], dtype=nz_book.dtype)),
        struct.pack("<H", nz_book.size),
        _le_bytes(nz_book),
    ])


def _with_width(head: bytes, gap_bits: int) -> bytes:
    """A sparse head with its gap_bits byte (the second) set."""
    return head[:1] + bytes([gap_bits]) + head[2:]


def _encode_sparse(head: bytes, gap_bits: int, gaps: np.ndarray, vals: np.ndarray,
                   pg: huffman.StreamPlan, pv: huffman.StreamPlan) -> Encoded:
    payload = _with_width(head, gap_bits) + huffman.encode(gaps, pg) + huffman.encode(vals, pv)
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
    if codec in _INDEX_CODECS:
        e = _element_size(cur)
        if e != elem_size:
            raise PayloadError(
                f"elements of {e} bytes, the tensor's type has {elem_size or 'other'}-byte ones"
            )
        decoder, coder = _INDEX_CODECS[codec]
        return decoder(cur, e, nbytes // e, coder)
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


def _decode_codebook(cur: Cursor, e: int, count: int, coder) -> np.ndarray:
    """Codecs 3 and 6: `coder` (the huffman or rans module) reads the index stream."""
    book = _read_book(cur, e)
    idx = coder.decode(cur, max_alphabet=book.size, count=count)
    cur.done()
    # 1-byte elements are looked up in place: the indices become the tensor, no second array
    out = idx if e == 1 else np.empty(idx.size, dtype=book.dtype)
    _native_call(_cnative.codebook_gather, idx, book, out)
    return out


def _decode_sparse(cur: Cursor, e: int, count: int, coder) -> np.ndarray:
    """Codecs 4 and 7: `coder` (the huffman or rans module) reads the two stream headers, and
    the C decoder of that coder walks both streams in step."""
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
    m, gap_model, gap_payload = coder.read_header(cur, 1 << gap_bits, max_symbols=n)
    m_vals, val_model, val_payload = coder.read_header(cur, book.size + 1, max_symbols=n)
    cur.done()
    if m != m_vals:
        raise PayloadError(f"{m} gaps but {m_vals} values")
    out = np.zeros(n, dtype=book.dtype) if fill == 0 else np.full(n, fill, dtype=book.dtype)
    walk = _cnative.rans_sparse_decode if coder is rans else _cnative.sparse_decode
    _native_call(walk, gap_model, gap_payload, val_model, val_payload, m, book.size, book, out)
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


# index codecs: (section decoder, stream coder)
_INDEX_CODECS = {
    Codec.CODEBOOK: (_decode_codebook, huffman),
    Codec.SPARSE: (_decode_sparse, huffman),
    Codec.CODEBOOK_RANS: (_decode_codebook, rans),
    Codec.SPARSE_RANS: (_decode_sparse, rans),
}


def _native_call(fn, *args) -> None:
    try:
        fn(*args)
    except _cnative.NativeError as e:
        raise PayloadError(str(e)) from e
