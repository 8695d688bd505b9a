"""Canonical Huffman streams over byte alphabets (the last stage of Deep Compression).

Han et al., "Deep Compression" (ICLR 2016), section 4: the cluster indices and the sparse gaps
have skewed distributions, and Huffman coding them saves a further 20-30%. Here code lengths
come from package-merge (Larmore & Hirschberg 1990), which gives the optimal prefix code whose
codes are at most 15 bits; that bound lets the C decoder (csrc/huffman.c) resolve codes of up to
11 bits with one table lookup. Only the lengths are stored: codes are canonical.

Stream layout, see docs/FORMAT.md (varint = unsigned LEB128):
    varint n symbols | varint alphabet A | length table | varint m | m bytes of bits
The length table is a run of 4-bit tokens, high nibble first, padded with a zero nibble to a
whole byte: token 1..15 is the code length of the next symbol, token 0 followed by token r
says that the next r + 1 symbols are unused. A one-symbol alphabet stores no bits (m = 0);
an empty stream has A = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _cnative
from .format import Cursor, PayloadError

MAX_BITS = 15


@dataclass(frozen=True)
class StreamPlan:
    """Code lengths for a symbol histogram, and the exact size they will take."""

    lengths: np.ndarray  # uint8, one per symbol of the alphabet (0 = unused)
    n: int
    bits: int  # payload bits
    entropy_bits: float  # sum over symbols of count * log2(n / count)

    @property
    def nbytes(self) -> int:
        """Size of the serialized stream, header included."""
        m = (self.bits + 7) // 8
        return len(pack_header(self)) + len(varint(m)) + m


def entropy_bits(counts: np.ndarray) -> float:
    """Empirical entropy bound of a stream with these symbol counts, in bits."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    n = c.sum()
    return float(np.sum(c * np.log2(n / c)))


def code_lengths(counts: np.ndarray, max_bits: int = MAX_BITS) -> np.ndarray:
    """Optimal code lengths of at most max_bits (package-merge); 0 for unused symbols.

    A single used symbol gets length 1 (the stream then holds no bits). Ties are broken by
    symbol value, so the result is the same on every platform.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.uint8)
    used = np.flatnonzero(counts)
    if used.size <= 1:
        lengths[used] = 1
        return lengths
    if used.size > 1 << max_bits:
        raise ValueError(f"{used.size} symbols cannot have codes of at most {max_bits} bits")
    order = used[np.argsort(counts[used], kind="stable")]
    leaf_w = counts[order]
    leaf_c = np.eye(order.size, dtype=np.int32)  # which leaves each item contains
    w, c = leaf_w, leaf_c
    for _ in range(max_bits - 1):
        m = w.size // 2 * 2
        w = np.concatenate([leaf_w, w[0:m:2] + w[1:m:2]])
        c = np.concatenate([leaf_c, c[0:m:2] + c[1:m:2]])
        keep = np.argsort(w, kind="stable")  # leaves sort before packages of equal weight
        w, c = w[keep], c[keep]
    lengths[order] = c[: 2 * order.size - 2].sum(axis=0)
    return lengths


def plan(counts: np.ndarray) -> StreamPlan:
    """Lengths and exact size for a histogram; the alphabet ends at the last used symbol."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    alphabet = int(used[-1]) + 1 if used.size else 0
    counts = counts[:alphabet]
    lengths = code_lengths(counts)
    bits = int(np.dot(counts, lengths)) if used.size > 1 else 0
    return StreamPlan(lengths, int(counts.sum()), bits, entropy_bits(counts))


def histogram(symbols: np.ndarray, minlength: int = 256, chunk: int = 1 << 22) -> np.ndarray:
    """Counts of each symbol. np.bincount widens its input to intp: a chunk at a time that is
    32 MB, on a whole 100 M-symbol stream 800 MB."""
    flat = np.asarray(symbols).reshape(-1)
    counts = np.zeros(minlength, dtype=np.int64)
    for i in range(0, flat.size, chunk):
        part = np.bincount(flat[i : i + chunk], minlength=minlength)
        if part.size > counts.size:
            part[: counts.size] += counts
            counts = part
        else:
            counts[: part.size] += part
    return counts


def encode(symbols: np.ndarray, p: StreamPlan | None = None) -> bytes:
    """Serialize a uint8 symbol stream (header, lengths, bits) with the C encoder."""
    symbols = np.ascontiguousarray(symbols, dtype=np.uint8).reshape(-1)
    p = p or plan(histogram(symbols))
    payload = b""
    if p.bits:
        payload = _cnative.huff_encode(p.lengths, symbols, (p.bits + 7) // 8)
    return pack_header(p) + varint(len(payload)) + payload


def varint(x: int) -> bytes:
    """Unsigned LEB128: 7 bits a byte, low bits first, high bit set on all but the last."""
    out = bytearray()
    while True:
        byte, x = x & 0x7F, x >> 7
        out.append(byte | (0x80 if x else 0))
        if not x:
            return bytes(out)


def read_varint(cur: Cursor) -> int:
    value = 0
    for shift in range(0, 64, 7):
        byte = cur.u8()
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    raise PayloadError("a varint longer than 64 bits")


def length_tokens(lengths: np.ndarray) -> list[int]:
    """The 4-bit tokens of a length table: lengths as they are, zero runs as (0, run - 1)."""
    tokens, i = [], 0
    lens = lengths.tolist()
    while i < len(lens):
        if lens[i]:
            tokens.append(lens[i])
            i += 1
            continue
        run = 1
        while run < 16 and i + run < len(lens) and not lens[i + run]:
            run += 1
        tokens += [0, run - 1]
        i += run
    return tokens


def pack_header(p: StreamPlan) -> bytes:
    """Symbol count, alphabet size and the length table."""
    tokens = length_tokens(p.lengths)
    if len(tokens) % 2:
        tokens.append(0)
    packed = bytes((tokens[i] << 4) | tokens[i + 1] for i in range(0, len(tokens), 2))
    return varint(p.n) + varint(p.lengths.size) + packed


def read_lengths(cur: Cursor, alphabet: int) -> np.ndarray:
    """Parse a length table of `alphabet` entries (the inverse of length_tokens)."""
    lengths = np.zeros(alphabet, dtype=np.uint8)
    nibbles: list[int] = []

    def token() -> int:
        if not nibbles:
            byte = cur.u8()
            nibbles.extend((byte >> 4, byte & 15))
        return nibbles.pop(0)

    i = 0
    while i < alphabet:
        t = token()
        if t:
            lengths[i] = t
            i += 1
        else:
            i += token() + 1
    if i != alphabet or any(nibbles):
        raise PayloadError(f"the code length table does not fit its alphabet of {alphabet}")
    return lengths


def read_counts(cur: Cursor, coder: str, max_alphabet: int, max_symbols: int | None
                ) -> tuple[int, int]:
    """A stream's first two fields, symbol count and alphabet size, as Huffman and rANS
    streams share them: checked against `max_symbols` (what the tensor's dims leave room for)
    and `max_alphabet` before anything is allocated; `coder` names the stream in errors."""
    n = read_varint(cur)
    if max_symbols is not None and n > max_symbols:
        raise PayloadError(
            f"{coder} stream of {n} symbols, the tensor's dims leave room for {max_symbols}"
        )
    alphabet = read_varint(cur)
    if alphabet > max_alphabet:
        raise PayloadError(
            f"{coder} alphabet of {alphabet} symbols, at most {max_alphabet} allowed"
        )
    if (alphabet == 0) != (n == 0):
        raise PayloadError(f"{coder} stream of {n} symbols with an alphabet of {alphabet}")
    return n, alphabet


def read_header(
    cur: Cursor, max_alphabet: int, max_symbols: int | None = None
) -> tuple[int, np.ndarray, memoryview]:
    """Parse one stream: (symbol count, code lengths, payload bytes).

    The symbol count is checked against `max_symbols` (what the tensor's dims leave room for)
    and against the payload (a code of two or more symbols spends at least a bit on each)
    before the caller allocates anything for the symbols."""
    n, alphabet = read_counts(cur, "Huffman", max_alphabet, max_symbols)
    lengths = read_lengths(cur, alphabet)
    payload = cur.take(read_varint(cur))
    if np.count_nonzero(lengths) > 1 and n > 8 * len(payload):
        raise PayloadError(f"Huffman stream of {n} symbols in only {len(payload)} bytes")
    return n, lengths, payload


def decode(cur: Cursor, max_alphabet: int = 256, count: int | None = None) -> np.ndarray:
    """Read one stream at the cursor and decode it with the C decoder; with `count`, the stream
    must hold exactly that many symbols (checked before decoding)."""
    n, lengths, payload = read_header(cur, max_alphabet, count)
    if count is not None and n != count:
        raise PayloadError(f"Huffman stream of {n} symbols, the tensor's dims need {count}")
    if n == 0:
        if len(payload):
            raise PayloadError("an empty Huffman stream with payload bytes")
        return np.empty(0, dtype=np.uint8)
    try:
        return _cnative.huff_decode(lengths, payload, n)
    except _cnative.NativeError as e:
        raise PayloadError(str(e)) from e


def coded_bits_per_symbol(p: StreamPlan) -> float:
    return p.bits / p.n if p.n else 0.0


def entropy_gap(p: StreamPlan) -> float:
    """Relative excess of the coded bits over the entropy bound (0.02 = 2% above)."""
    if p.entropy_bits == 0:
        return 0.0 if p.bits == 0 else math.inf
    return p.bits / p.entropy_bits - 1.0
