"""Static rANS streams over byte alphabets: the container's alternative to Huffman streams.

A Huffman code spends a whole number of bits on every symbol, which costs 0.5-3% over the
order-0 entropy on the skewed cluster indices and gaps of Deep Compression. Range ANS (Duda,
"Asymmetric numeral systems", 2013) spends log2(2^P / f) bits on a symbol of frequency f out of
2^P, which lands within about 0.05% of the entropy once the frequencies are quantized well. The
state is 32 bits, renormalized a byte at a time (as Giesen describes for rans_byte); the C coder
is csrc/rans.c. The writer keeps whichever of the two streams is smaller (codecs.py).

Stream layout, see docs/FORMAT.md (varint = unsigned LEB128):
    varint n symbols | varint alphabet A | u8 P | A varint frequencies | varint m | m bytes
P and the frequencies are present only when A > 0, which is when n > 0. The frequencies sum
to exactly 2^P; the payload is the encoder's final state (4 bytes, little-endian) followed by
the bytes it shifted out, in the order the decoder reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _cnative
from .format import Cursor, PayloadError
from .huffman import entropy_bits, read_counts, read_varint, varint

PRECISIONS = range(1, 16)  # P: frequencies out of 2^P; the C decoder's slot table has 2^P bytes
STATE_LOW = 1 << 23  # L: the state stays in [L, 2^8 L), 32 bits
STATE_BYTES = 4
_TIE = 1e-9  # relative margin: costs closer than this are ties, so rounding never decides


@dataclass(frozen=True)
class Model:
    """Quantized frequencies for a symbol histogram, and what the stream will cost."""

    freqs: np.ndarray  # uint32, one per symbol of the alphabet (0 = unused); empty if n == 0
    precision: int  # P, 0 for an empty stream
    n: int
    ideal_bits: float  # sum of count * log2(2^P / freq): the payload, up to a few bytes
    entropy_bits: float

    @property
    def header(self) -> bytes:
        """Symbol count, alphabet size, precision and frequencies (all but m and the payload)."""
        head = varint(self.n) + varint(self.freqs.size)
        if not self.freqs.size:
            return head
        return head + bytes([self.precision]) + b"".join(varint(int(f)) for f in self.freqs)

    @property
    def capacity(self) -> int:
        """Bytes the payload can need at most (payload_bounds), for the encoder's buffer."""
        return payload_bounds(self)[1]

    def size_bounds(self) -> tuple[int, int]:
        """Least and most bytes the whole stream can take (payload_bounds)."""
        lo, hi = payload_bounds(self)
        head = len(self.header)
        return head + len(varint(lo)) + lo, head + len(varint(hi)) + hi


def payload_bounds(model: Model) -> tuple[int, int]:
    """Least and most bytes a payload with these frequencies can take, whatever the symbols'
    order, from the ideal size I = sum of log2(2^P / f) over the symbols.

    Track J = 8 k + log2(x): k bytes shifted out, x the encoder's state; J starts at 23 (x = L)
    and ends at 8 k + log2(x_end), x_end in [2^23, 2^31). Shifting a byte out (x >= 2^16 then)
    keeps J or lowers it by less than eta = -log2(1 - 255 / 2^16). Encoding a symbol of
    frequency f from x >= 2^(23 - P) f gives x 2^P / f + e with |e| < 2^P, which moves J by
    log2(2^P / f) + log2(1 + d), |d| < 2^(P - 23). So 8 k < I + n log2(1 + 2^(P - 23)) and
    (8 + eta) k > I - 8 + n log2(1 - 2^(P - 23)). The payload is 4 + k bytes; the slack
    covers the float sums."""
    if not model.n:
        return 0, 0
    step = (1 << model.precision) / STATE_LOW
    ideal, n = model.ideal_bits, model.n
    most = (ideal * (1 + 1e-9) + n * math.log2(1 + step)) / 8
    eta = -math.log2(1 - 255 / 2**16)
    least = (ideal * (1 - 1e-9) - 8 + n * math.log2(1 - step)) / (8 + eta)
    return STATE_BYTES + max(0, math.floor(least) - 1), STATE_BYTES + math.ceil(most) + 2


def normalize(counts: np.ndarray, precision: int) -> np.ndarray:
    """Frequencies summing to 2^precision, at least 1 for every used symbol and 0 for the others,
    that minimise the ideal payload sum(count * log2(2^P / freq)) (see _rounded, _exchange)."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size > 1 << precision:
        raise ValueError(f"{used.size} symbols do not fit frequencies out of 2^{precision}")
    c = counts[used]
    f = _rounded(c, [precision])[0]
    _exchange(c, f)
    out = np.zeros(counts.size, dtype=np.uint32)
    out[used] = f
    return out


def _rounded(c: np.ndarray, precisions: list[int]) -> np.ndarray:
    """Frequencies of the used symbols' counts `c` at each precision (one row each), close to
    optimal: the continuous optimum is f = c 2^P / n where that is >= 1 and 1 elsewhere (water
    filling: the symbols held at 1 take slots from the others' shares, which may push more of
    them under 1), rounded down, the spare slots going to the largest remainders (ties to the
    lower symbol). Exact integer arithmetic, so every machine gets the same table."""
    u = c.size
    total = np.left_shift(1, np.array(precisions, dtype=np.int64))[:, None]
    held = np.zeros((total.size, u), dtype=bool)
    while True:
        slots = total - held.sum(axis=1, keepdims=True)  # left for the symbols not held at 1
        mass = int(c.sum()) - (held * c).sum(axis=1, keepdims=True)  # > 0: the largest is free
        scaled = c * slots
        low = ~held & (scaled < mass)  # a share below one slot
        if not low.any():
            break
        held |= low
    share = scaled // mass
    f = np.where(held, 1, share)
    rank_key = np.where(held, -1, scaled - share * mass) * u + (u - 1 - np.arange(u))
    order = np.argsort(-rank_key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(u), order.shape), axis=1)
    spare = total - f.sum(axis=1, keepdims=True)  # 0 <= spare < u: the remainders' sum
    return f + (rank < spare)


def _exchange(c: np.ndarray, f: np.ndarray) -> None:
    """Move single units of frequency from the symbol that loses least by giving one up to the
    one that gains most by taking one, while that saves bits. The cost is separable and convex
    in each frequency, so once no such move helps the table is optimal. Near-ties (within _TIE)
    are left alone, so float rounding decides nothing."""
    cost = c.astype(np.float64)
    gain = cost * np.log2((f + 1) / f)  # bits saved by one more unit
    loss = np.full(f.size, math.inf)  # bits lost by one unit less (impossible at 1)
    big = f > 1
    loss[big] = cost[big] * np.log2(f[big] / (f[big] - 1))
    while True:
        t, s = int(np.argmax(gain)), int(np.argmin(loss))
        if not gain[t] - loss[s] > _TIE * loss[s]:  # also stops when t == s: gain < loss there
            return
        f[t] += 1
        f[s] -= 1
        for i in (t, s):
            fi, ci = int(f[i]), float(cost[i])
            gain[i] = ci * math.log2((fi + 1) / fi)
            loss[i] = ci * math.log2(fi / (fi - 1)) if fi > 1 else math.inf


def _table_bytes(freqs: np.ndarray) -> np.ndarray:
    """Varint bytes of frequencies (each at most 2^15: 1 to 3 bytes), summed along the last
    axis."""
    return (1 + (freqs >= 1 << 7) + (freqs >= 1 << 14)).sum(axis=-1)


def plan(counts: np.ndarray) -> Model:
    """The model whose header and ideal payload are smallest over the precisions that fit the
    used symbols (priced with the rounded tables, ties to the lower precision; then the chosen
    table is polished by _exchange); the alphabet ends at the last used symbol."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    if not used.size:
        return Model(np.zeros(0, dtype=np.uint32), 0, 0, 0.0, 0.0)
    counts = counts[: int(used[-1]) + 1]
    c = counts[used]
    ps = [p for p in PRECISIONS if used.size <= 1 << p]
    rows = _rounded(c, ps)
    ideal = (np.array(ps)[:, None] - np.log2(rows)) @ c.astype(np.float64)
    cost = 8 * (_table_bytes(rows) + counts.size - used.size) + ideal
    best = int(np.flatnonzero(cost - cost.min() <= _TIE * cost.min())[0])
    p, f = ps[best], rows[best].copy()
    _exchange(c, f)
    freqs = np.zeros(counts.size, dtype=np.uint32)
    freqs[used] = f
    ideal_bits = float(np.dot(c, p - np.log2(f)))
    return Model(freqs, p, int(c.sum()), ideal_bits, entropy_bits(counts))


def stream(model: Model, payload: bytes) -> bytes:
    """A whole stream: the model's header, the payload's length, the payload."""
    return model.header + varint(len(payload)) + payload


def encode_payload(symbols: np.ndarray, model: Model) -> bytes:
    """The payload of a uint8 symbol stream, encoded by the C coder (empty when n == 0)."""
    if not model.n:
        return b""
    return _cnative.rans_encode(model.freqs, model.precision, symbols, model.capacity)


def encode(symbols: np.ndarray, model: Model | None = None) -> bytes:
    """Serialize a uint8 symbol stream (header, frequencies, payload)."""
    symbols = np.ascontiguousarray(symbols, dtype=np.uint8).reshape(-1)
    if model is None:
        model = plan(np.bincount(symbols, minlength=256))
    return stream(model, encode_payload(symbols, model))


def read_header(
    cur: Cursor, max_alphabet: int, max_symbols: int | None = None
) -> tuple[int, tuple[np.ndarray, int], memoryview]:
    """Parse one stream: (symbol count, (frequencies, precision), payload bytes).

    The symbol count is checked against `max_symbols` (what the tensor's dims leave room for)
    before the caller allocates anything; the frequencies must sum to exactly 2^P."""
    n, alphabet = read_counts(cur, "rANS", max_alphabet, max_symbols)
    freqs, precision = np.zeros(0, dtype=np.uint32), 0
    if alphabet:
        precision = cur.u8()
        if precision not in PRECISIONS:
            raise PayloadError(f"rANS precision of {precision} bits, expected 1..15")
        values = [read_varint(cur) for _ in range(alphabet)]
        if sum(values) != 1 << precision:
            raise PayloadError(
                f"rANS frequencies sum to {sum(values)}, not 2^{precision} = {1 << precision}"
            )
        if not values[-1]:
            raise PayloadError("rANS alphabet goes past its last used symbol")
        freqs = np.array(values, dtype=np.uint32)  # each <= 2^15 now
    payload = cur.take(read_varint(cur))
    if not n and len(payload):
        raise PayloadError("an empty rANS stream with payload bytes")
    if n and len(payload) < STATE_BYTES:
        raise PayloadError(f"rANS payload of {len(payload)} bytes, shorter than its state")
    return n, (freqs, precision), payload


def decode(cur: Cursor, max_alphabet: int = 256, count: int | None = None) -> np.ndarray:
    """Read one stream at the cursor and decode it with the C decoder; with `count`, the stream
    must hold exactly that many symbols (checked before decoding)."""
    n, (freqs, precision), payload = read_header(cur, max_alphabet, count)
    if count is not None and n != count:
        raise PayloadError(f"rANS stream of {n} symbols, the tensor's dims need {count}")
    if not n:
        return np.empty(0, dtype=np.uint8)
    try:
        return _cnative.rans_decode(freqs, precision, payload, n)
    except _cnative.NativeError as e:
        raise PayloadError(str(e)) from e


def sparse_payloads(gaps: np.ndarray, vals: np.ndarray, gap_bits: int, filler: int,
                    gap_model: Model, val_model: Model) -> tuple[bytes, bytes]:
    """The gap and value payloads of the sparse form at `gap_bits`, encoded in C straight from
    the entries (see _cnative.rans_sparse_encode); the models describe the two streams with
    their filler entries."""
    if not gap_model.n:
        return b"", b""
    return _cnative.rans_sparse_encode(
        gaps, vals, gap_bits, filler,
        (gap_model.freqs, gap_model.precision, gap_model.capacity),
        (val_model.freqs, val_model.precision, val_model.capacity),
    )
