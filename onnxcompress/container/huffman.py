"""Canonical Huffman streams over byte alphabets (the last stage of Deep Compression).

Han et al., "Deep Compression" (ICLR 2016), section 4: the cluster indices and the sparse gaps
have skewed distributions, and Huffman coding them saves a further 20-30%. Here code lengths
come from package-merge (Larmore & Hirschberg 1990), which gives the optimal prefix code whose
codes are at most 15 bits; that bound lets the C decoder (csrc/huffman.c) resolve codes of up to
11 bits with one table lookup. Only the lengths are stored: codes are canonical.

Stream layout (all little-endian), see docs/FORMAT.md:
    u64 n symbols | u16 alphabet A | ceil(A/2) bytes of 4-bit lengths | u64 m | m bytes of bits
A one-symbol alphabet stores no bits (m = 0); an empty stream has A = 0.
"""

from __future__ import annotations

import math
import struct
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
        return 8 + 2 + (self.lengths.size + 1) // 2 + 8 + (self.bits + 7) // 8


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


def histogram(symbols: np.ndarray) -> np.ndarray:
    return np.bincount(symbols, minlength=256)


def encode(symbols: np.ndarray, p: StreamPlan | None = None) -> bytes:
    """Serialize a uint8 symbol stream (header, lengths, bits) with the C encoder."""
    symbols = np.ascontiguousarray(symbols, dtype=np.uint8).reshape(-1)
    p = p or plan(histogram(symbols))
    payload = b""
    if p.bits:
        payload = _cnative.huff_encode(p.lengths, symbols, (p.bits + 7) // 8)
    return pack_header(p) + struct.pack("<Q", len(payload)) + payload


def pack_header(p: StreamPlan) -> bytes:
    """Symbol count, alphabet size and the 4-bit lengths (high nibble = even symbol)."""
    lens = p.lengths
    if lens.size % 2:
        lens = np.append(lens, np.uint8(0))
    nibbles = (lens[0::2] << 4) | lens[1::2]
    return struct.pack("<QH", p.n, p.lengths.size) + nibbles.astype(np.uint8).tobytes()


def read_header(cur: Cursor, max_alphabet: int) -> tuple[int, np.ndarray, memoryview]:
    """Parse one stream: (symbol count, code lengths, payload bytes)."""
    n = cur.u64()
    alphabet = cur.u16()
    if alphabet > max_alphabet:
        raise PayloadError(f"Huffman alphabet of {alphabet} symbols, at most {max_alphabet} allowed")
    if (alphabet == 0) != (n == 0):
        raise PayloadError(f"Huffman stream of {n} symbols with an alphabet of {alphabet}")
    packed = np.frombuffer(cur.take((alphabet + 1) // 2), dtype=np.uint8)
    lengths = np.empty(packed.size * 2, dtype=np.uint8)
    lengths[0::2] = packed >> 4
    lengths[1::2] = packed & 15
    payload = cur.take(cur.u64())
    return n, lengths[:alphabet], payload


def decode(cur: Cursor, max_alphabet: int = 256) -> np.ndarray:
    """Read one stream at the cursor and decode it with the C decoder."""
    n, lengths, payload = read_header(cur, max_alphabet)
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
