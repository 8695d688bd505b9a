"""Slow, obviously-correct Python twins of the C routines, used only by tests to cross-check.

Canonical code assignment follows RFC 1951 section 3.2.2; the sparse walk follows Han et al.,
"Deep Compression" (ICLR 2016), section 4 (relative indices with filler entries). Nothing here
is used when reading or writing a container.
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
