"""Slow, obviously-correct Python twins of the C routines, used only by tests to cross-check.

Canonical code assignment follows RFC 1951 section 3.2.2; the sparse walk follows Han et al.,
"Deep Compression" (ICLR 2016), section 4 (relative indices with filler entries); the rANS coder
follows docs/FORMAT.md ("rANS streams") step by step, in Python integers. Nothing here is used
when reading or writing a container.
"""

from __future__ import annotations

import numpy as np


def canonical_codes(lengths: np.ndarray) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length) for the used symbols, codes assigned in (length, symbol) order."""
    lengths = [int(x) for x in lengths]
    code, prev_len, out = 0, 0, {}
    for sym in sorted((s for s, n in enumerate(lengths) if n), key=lambda s: (lengths[s], s)):
        code <<= lengths[sym] - prev_len
        out[sym] = (code, lengths[sym])
        prev_len = lengths[sym]
        code += 1
    return out


def encode(lengths: np.ndarray, symbols: np.ndarray) -> bytes:
    """Bit string of the symbols' codes, MSB first, zero-padded to a byte."""
    codes = canonical_codes(lengths)
    if len(codes) == 1:
        return b""
    bits = "".join(format(codes[int(s)][0], f"0{codes[int(s)][1]}b") for s in symbols)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def decode(lengths: np.ndarray, data: bytes, n: int) -> np.ndarray:
    """Walk the bits one at a time until they spell a code; raise ValueError on bad input."""
    codes = canonical_codes(lengths)
    if len(codes) == 1:
        if data:
            raise ValueError("a one-symbol stream with payload bytes")
        return np.full(n, next(iter(codes)), dtype=np.uint8)
    by_code = {(code, length): sym for sym, (code, length) in codes.items()}
    bits = "".join(format(b, "08b") for b in data)
    out, pos = [], 0
    for _ in range(n):
        code, length = 0, 0
        while (code, length) not in by_code:
            if length >= 15 or pos >= len(bits):
                raise ValueError("bad code or stream too short")
            code, length, pos = (code << 1) | int(bits[pos]), length + 1, pos + 1
        out.append(by_code[(code, length)])
    if (pos + 7) // 8 != len(data):
        raise ValueError("trailing bytes")
    return np.array(out, dtype=np.uint8)


def sparse_expand(
    gaps: np.ndarray, vals: np.ndarray, filler: int, book: np.ndarray, fill: int, n: int
) -> np.ndarray:
    """Dense tensor from (gap, value) entries; a filler entry occupies a position left at fill."""
    out = np.full(n, fill, dtype=book.dtype)
    pos = -1
    for gap, val in zip(gaps.tolist(), vals.tolist()):
        pos += gap + 1
        if val != filler:
            out[pos] = book[val]
    return out


RANS_LOW = 1 << 23


def _starts(freqs: list[int]) -> list[int]:
    out, total = [], 0
    for f in freqs:
        out.append(total)
        total += f
    return out


def rans_encode(freqs: np.ndarray, precision: int, symbols: np.ndarray) -> bytes:
    """Payload of an rANS stream: symbols last to first from state L, bytes shifted out while the
    state would pass 2^31, then the final state (u32 LE) followed by those bytes reversed."""
    freqs = [int(f) for f in freqs]
    if sum(freqs) != 1 << precision:
        raise ValueError("frequencies must sum to 2^precision")
    starts, out, x = _starts(freqs), [], RANS_LOW
    for s in reversed([int(v) for v in symbols]):
        f = freqs[s] if s < len(freqs) else 0
        if not f:
            raise ValueError(f"symbol {s} has no frequency")
        while x >= (RANS_LOW >> precision) * 256 * f:
            out.append(x % 256)
            x //= 256
        x = (x // f) * (1 << precision) + x % f + starts[s]
    return x.to_bytes(4, "little") + bytes(reversed(out))


def rans_decode(freqs: np.ndarray, precision: int, data: bytes, n: int) -> np.ndarray:
    """Decode n symbols; raise ValueError on a bad table, a state out of range, a payload that
    ends early or has bytes left, or a final state other than L."""
    freqs = [int(f) for f in freqs]
    total = 1 << precision
    if sum(freqs) != total:
        raise ValueError("frequencies must sum to 2^precision")
    starts = _starts(freqs)
    if len(data) < 4:
        raise ValueError("no room for the state")
    x, pos = int.from_bytes(data[:4], "little"), 4
    if not RANS_LOW <= x < 1 << 31:
        raise ValueError("initial state out of range")
    out = []
    for _ in range(n):
        t = x % total
        s = next(i for i, (c, f) in enumerate(zip(starts, freqs)) if c <= t < c + f)
        out.append(s)
        x = freqs[s] * (x // total) + t - starts[s]
        while x < RANS_LOW:
            if pos == len(data):
                raise ValueError("payload ended early")
            x, pos = x * 256 + data[pos], pos + 1
    if pos != len(data):
        raise ValueError("payload bytes left over")
    if x != RANS_LOW:
        raise ValueError("final state is not L")
    return np.array(out, dtype=np.uint8)
