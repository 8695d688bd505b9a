"""The C rANS coder (csrc/rans.c) against the Python reference, its error codes, the frequency
normalization and the proven size bounds the writer prices with."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from onnxcompress.container import _cnative, huffman, rans, reference
from onnxcompress.container.format import Cursor
from onnxcompress.container.sparse import sparse_entries


def stream_of(rng: np.random.Generator, n: int, alphabet: int, shape: str) -> np.ndarray:
    if shape == "uniform":
        return rng.integers(0, alphabet, size=n).astype(np.uint8)
    if shape == "geometric":
        return np.minimum(rng.geometric(0.3, size=n) - 1, alphabet - 1).astype(np.uint8)
    p = 0.5 ** np.arange(alphabet, dtype=np.float64)  # very skewed: rare symbols get 1 slot
    return rng.choice(alphabet, size=n, p=p / p.sum()).astype(np.uint8)


def gaussian_indices(rng: np.random.Generator, n: int) -> np.ndarray:
    """27 k-means-like levels of a Gaussian, 30% of the elements pruned to the middle one."""
    idx = np.clip(np.round(rng.normal(0, 4, n)), -13, 13).astype(np.int64) + 13
    idx[rng.random(n) < 0.3] = 13
    return idx.astype(np.uint8)


@pytest.mark.parametrize(("n", "alphabet", "shape"), list(itertools.product(
    (1, 2, 7, 300), (1, 2, 3, 27, 256), ("uniform", "geometric", "skewed"))))
def test_c_coder_matches_reference(n: int, alphabet: int, shape: str) -> None:
    sym = stream_of(np.random.default_rng(n * 1000 + alphabet), n, alphabet, shape)
    m = rans.plan(np.bincount(sym, minlength=256))
    data = rans.encode_payload(sym, m)
    assert data == reference.rans_encode(m.freqs, m.precision, sym)
    assert np.array_equal(reference.rans_decode(m.freqs, m.precision, data, n), sym)
    assert np.array_equal(_cnative.rans_decode(m.freqs, m.precision, data, n), sym)


@pytest.mark.parametrize(("precision", "freqs"), [
    (1, [1, 1]),
    (1, [2]),  # one symbol: the state never moves, the payload is L itself
    (15, [1, 2**15 - 2, 1]),  # rare symbols: two bytes out per symbol
    (15, [2**15]),
    (8, [0, 3, 0, 250, 3]),
    (15, [128] * 256),
])
def test_precision_extremes_match_reference(precision: int, freqs: list[int]) -> None:
    f = np.array(freqs, dtype=np.uint32)
    used = np.flatnonzero(f)
    sym = np.random.default_rng(precision).choice(used, size=400).astype(np.uint8)
    data = _cnative.rans_encode(f, precision, sym, 4 + 2 * sym.size)
    assert data == reference.rans_encode(f, precision, sym)
    assert np.array_equal(_cnative.rans_decode(f, precision, data, sym.size), sym)
    if used.size == 1:
        assert data == (1 << 23).to_bytes(4, "little")


def brute_force_best(counts: list[int], total: int) -> float:
    """Least ideal payload over every table of frequencies >= 1 summing to `total`."""
    best = math.inf
    for cut in itertools.combinations(range(1, total), len(counts) - 1):
        f = np.diff((0, *cut, total))
        best = min(best, sum(c * math.log2(total / x) for c, x in zip(counts, f)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_normalized_frequencies_are_optimal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    u = int(rng.integers(1, 5))
    counts = (rng.pareto(1.0, size=u) * 20 + 1).astype(np.int64)
    for precision in range(max(1, math.ceil(math.log2(u))), 6):
        f = rans.normalize(counts, precision)
        assert int(f.sum()) == 1 << precision and (f >= 1).all()
        cost = sum(c * math.log2((1 << precision) / x) for c, x in zip(counts, f))
        assert cost <= brute_force_best(counts.tolist(), 1 << precision) + 1e-9


def test_normalization_keeps_every_used_symbol_and_nothing_else() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        counts = rng.integers(0, 1000, size=256) * (rng.random(256) < 0.3)
        counts[int(rng.integers(256))] = 10**7  # one dominant symbol, many rare ones
        for precision in (8, 12, 15):
            f = rans.normalize(counts, precision)
            assert int(f.sum()) == 1 << precision
            assert ((f > 0) == (counts > 0)).all()


@pytest.mark.parametrize("shape", ["uniform", "geometric", "skewed"])
def test_payloads_stay_within_the_proven_bounds(shape: str) -> None:
    rng = np.random.default_rng(len(shape))
    for n in (1, 10, 1000, 50_000):
        sym = stream_of(rng, n, 40, shape)
        m = rans.plan(np.bincount(sym, minlength=256))
        least, most = rans.payload_bounds(m)
        payload = rans.encode_payload(sym, m)
        assert least <= len(payload) <= most == m.capacity
        lo, hi = m.size_bounds()
        assert lo <= len(rans.stream(m, payload)) <= hi


def test_realistic_indices_land_within_a_tenth_of_a_percent_of_the_entropy() -> None:
    sym = gaussian_indices(np.random.default_rng(0), 1_000_000)
    counts = np.bincount(sym, minlength=256)
    stream = rans.encode(sym)
    entropy = huffman.entropy_bits(counts) / 8
    assert len(stream) <= 1.001 * entropy
    assert len(stream) < huffman.plan(counts).nbytes  # Huffman: about 2% over here
    assert np.array_equal(rans.decode(Cursor(memoryview(stream))), sym)
    assert rans.encode(sym) == stream  # deterministic


def test_empty_and_one_symbol_streams() -> None:
    assert rans.encode(np.empty(0, np.uint8)) == b"\0\0\0"
    assert rans.decode(Cursor(memoryview(b"\0\0\0"))).size == 0
    one = rans.encode(np.full(5000, 9, np.uint8))
    assert np.array_equal(rans.decode(Cursor(memoryview(one))), np.full(5000, 9, np.uint8))


def _payload(n: int = 500) -> tuple[np.ndarray, int, np.ndarray, bytes]:
    sym = stream_of(np.random.default_rng(9), n, 6, "geometric")
    m = rans.plan(np.bincount(sym, minlength=256))
    return m.freqs, m.precision, sym, rans.encode_payload(sym, m)


def test_c_error_codes() -> None:
    freqs, p, sym, data = _payload()
    cases = [
        (lambda: _cnative.rans_decode(freqs + np.eye(1, freqs.size, 0, np.uint32)[0], p, data,
                                      sym.size), -9),  # frequencies sum to 2^P + 1
        (lambda: _cnative.rans_decode(freqs, 16, data, sym.size), -9),  # precision past 15
        (lambda: _cnative.rans_decode(freqs, p, data[:-1], sym.size), -2),  # ended early
        (lambda: _cnative.rans_decode(freqs, p, data[:3], sym.size), -2),  # not even the state
        (lambda: _cnative.rans_decode(freqs, p, data + b"\0", sym.size), -4),  # left over
        (lambda: _cnative.rans_decode(freqs, p, bytes(4) + data[4:], sym.size), -10),  # state
        (lambda: _cnative.rans_encode(freqs, p, np.append(sym, 200).astype(np.uint8), 4096),
         -11),  # a symbol past the alphabet
    ]
    for call, code in cases:
        with pytest.raises(_cnative.NativeError) as e:
            call()
        assert e.value.code == code, (code, str(e.value))
    f = np.ascontiguousarray(freqs, dtype=np.uint32)
    out = np.empty(8, np.uint8)  # the encoder stops at the end of its buffer
    rc = _cnative.library().ocx_rans_encode(f.ctypes.data, f.size, p, sym.ctypes.data, sym.size,
                                            out.ctypes.data, out.size)
    assert rc == -12


def test_a_damaged_payload_is_refused() -> None:
    freqs, p, sym, data = _payload(2000)
    for at in range(0, len(data), max(1, len(data) // 40)):
        bad = bytearray(data)
        bad[at] ^= 0x40
        with pytest.raises(_cnative.NativeError) as e:
            _cnative.rans_decode(freqs, p, bytes(bad), sym.size)
        assert e.value.code in (-2, -4, -10), at  # ends early, bytes left, or the wrong state


def test_random_garbage_never_crashes() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        p = int(rng.integers(1, 9))
        k = int(rng.integers(1, 9))
        cut = np.sort(rng.integers(0, (1 << p) + 1, size=k - 1))
        freqs = np.diff(np.concatenate(([0], cut, [1 << p]))).astype(np.uint32)
        data = rng.integers(0, 256, size=int(rng.integers(0, 30)), dtype=np.uint8).tobytes()
        if rng.random() < 0.5 and len(data) >= 4:  # a plausible state
            data = int(rng.integers(1 << 23, 1 << 31)).to_bytes(4, "little") + data[4:]
        n = int(rng.integers(1, 60))
        try:
            out = _cnative.rans_decode(freqs, p, data, n)
        except _cnative.NativeError:
            with pytest.raises(ValueError):
                reference.rans_decode(freqs, p, data, n)
            continue
        assert np.array_equal(out, reference.rans_decode(freqs, p, data, n))


def entries(rng: np.random.Generator, count: int, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(gaps before the non-fill elements, their value symbols, tensor size); a few long gaps."""
    gaps = rng.geometric(0.4, size=count).astype(np.uint32) - 1
    gaps[rng.random(count) < 0.02] += rng.integers(200, 2000, dtype=np.uint32)
    return gaps, rng.integers(0, k, size=count).astype(np.uint8), int(gaps.sum()) + count + 5


@pytest.mark.parametrize("width", [1, 3, 5, 8])
def test_fused_sparse_encoder_writes_the_streams_of_sparse_entries(width: int) -> None:
    rng = np.random.default_rng(width)
    k = 7
    gaps, vals, n = entries(rng, 3000, k)
    idx = np.full(n, k, np.uint8)  # the fill is the last codebook entry
    idx[np.cumsum(gaps.astype(np.int64) + 1) - 1] = vals
    g, v, _ = sparse_entries(idx, np.arange(k + 1, dtype=np.uint8), k, width)
    gm, vm = rans.plan(np.bincount(g, minlength=256)), rans.plan(np.bincount(v, minlength=256))
    fused = rans.sparse_payloads(gaps, vals, width, k, gm, vm)
    assert fused == (rans.encode_payload(g, gm), rans.encode_payload(v, vm))


@pytest.mark.parametrize("e", [1, 2, 4, 8])
def test_fused_sparse_decoder_matches_the_reference(e: int) -> None:
    rng = np.random.default_rng(e)
    n, k = 5000, 7
    book = rng.integers(1, 2 ** (8 * e) - 1, size=k, dtype=np.uint64).astype(f"<u{e}")
    gaps = rng.integers(0, 6, size=700).astype(np.uint8)
    vals = rng.integers(0, k + 1, size=700).astype(np.uint8)  # k = filler
    gm = rans.plan(np.bincount(gaps, minlength=256))
    vm = rans.plan(np.bincount(vals, minlength=256))
    streams = ((gm.freqs, gm.precision), rans.encode_payload(gaps, gm),
               (vm.freqs, vm.precision), rans.encode_payload(vals, vm))
    out = np.zeros(n, dtype=book.dtype)
    _cnative.rans_sparse_decode(*streams, gaps.size, k, book, out)
    np.testing.assert_array_equal(out, reference.sparse_expand(gaps, vals, k, book, 0, n))
    short = np.zeros(int(gaps.sum()) + gaps.size - 1, dtype=book.dtype)  # last entry past the end
    with pytest.raises(_cnative.NativeError, match="position past the tensor"):
        _cnative.rans_sparse_decode(*streams, gaps.size, k, book, short)
    with pytest.raises(_cnative.NativeError, match="left over|does not end"):  # an entry short
        _cnative.rans_sparse_decode(*streams, gaps.size - 1, k, book, out)
