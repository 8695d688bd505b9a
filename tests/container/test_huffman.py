"""The C Huffman coder against the Python reference, and its size against the entropy bound."""

from __future__ import annotations

import functools
import heapq

import numpy as np
import pytest

from onnxcompress.container import _cnative, codecs, huffman, reference
from onnxcompress.container.format import Cursor, PayloadError

from .models import pruned_clustered


def heap_huffman_bits(counts: np.ndarray) -> int:
    """Total bits of an unrestricted Huffman code (textbook heap construction)."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) < 2:
        return 0
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        total += a + b
        heapq.heappush(heap, a + b)
    return total


def random_stream(rng: np.random.Generator, n: int, alphabet: int, shape: str) -> np.ndarray:
    if shape == "uniform":
        return rng.integers(0, alphabet, size=n).astype(np.uint8)
    if shape == "geometric":
        return np.minimum(rng.geometric(0.3, size=n) - 1, alphabet - 1).astype(np.uint8)
    p = 0.5 ** np.arange(alphabet, dtype=np.float64)  # dyadic: codes up to 15 bits long
    return rng.choice(alphabet, size=n, p=p / p.sum()).astype(np.uint8)


CASES = [
    (n, a, s)
    for n in (1, 2, 7, 1000)
    for a in (1, 2, 3, 40, 256)
    for s in ("uniform", "geometric", "dyadic")
]


@pytest.mark.parametrize("n,alphabet,shape", CASES)
def test_c_decoder_matches_reference(n: int, alphabet: int, shape: str) -> None:
    rng = np.random.default_rng(n * 1000 + alphabet)
    sym = random_stream(rng, n, alphabet, shape)
    p = huffman.plan(huffman.histogram(sym))
    data = _cnative.huff_encode(p.lengths, sym, (p.bits + 7) // 8) if p.bits else b""
    assert data == reference.encode(p.lengths, sym)
    ref = reference.decode(p.lengths, data, n)
    assert np.array_equal(ref, sym)
    assert np.array_equal(_cnative.huff_decode(p.lengths, data, n), sym)


def test_long_codes_take_the_slow_path() -> None:
    counts = np.array([2**20 >> i for i in range(16)] + [1], dtype=np.int64)
    lengths = huffman.code_lengths(counts)
    assert lengths.max() == huffman.MAX_BITS  # beyond the C decoder's 11-bit table
    sym = np.repeat(np.arange(counts.size, dtype=np.uint8), np.minimum(counts, 50))
    np.random.default_rng(3).shuffle(sym)
    bits = int(np.dot(np.bincount(sym, minlength=lengths.size), lengths))
    data = _cnative.huff_encode(lengths, sym, (bits + 7) // 8)
    assert np.array_equal(_cnative.huff_decode(lengths, data, sym.size), sym)
    assert np.array_equal(reference.decode(lengths, data, sym.size), sym)


def test_random_garbage_never_crashes() -> None:
    rng = np.random.default_rng(7)
    lengths = huffman.code_lengths(np.array([5, 1, 1, 9, 0, 3, 2, 40]))
    lengths[-1] = 0  # incomplete code: some bit patterns are no code
    for _ in range(300):
        data = rng.integers(0, 256, size=rng.integers(0, 40), dtype=np.uint8).tobytes()
        n = int(rng.integers(0, 100))
        try:
            out = _cnative.huff_decode(lengths, data, n)
        except _cnative.NativeError:
            continue
        assert np.array_equal(out, reference.decode(lengths, data, n))


@pytest.mark.parametrize("cut,code", [(-1, -2), (+1, -4)])
def test_short_or_long_payload_is_rejected(cut: int, code: int) -> None:
    sym = np.arange(200, dtype=np.uint8) % 5
    p = huffman.plan(huffman.histogram(sym))
    data = _cnative.huff_encode(p.lengths, sym, (p.bits + 7) // 8)
    data = data[:cut] if cut < 0 else data + b"\0"
    with pytest.raises(_cnative.NativeError) as e:
        _cnative.huff_decode(p.lengths, data, sym.size)
    assert e.value.code == code


def test_invalid_lengths_are_rejected() -> None:
    with pytest.raises(_cnative.NativeError):
        _cnative.huff_decode(np.array([1, 1, 1], np.uint8), b"\0", 1)  # oversubscribed
    with pytest.raises(_cnative.NativeError):
        _cnative.huff_decode(np.array([16, 1], np.uint8), b"\0", 1)  # longer than 15 bits


def test_package_merge_is_optimal_and_limited() -> None:
    rng = np.random.default_rng(11)
    for trial in range(150):
        k = int(rng.integers(2, 257))
        counts = rng.integers(0, 1000, size=k) * (rng.random(k) < 0.8)
        if trial % 3 == 0:
            counts = 2 ** rng.integers(0, 30, size=k)
        used = counts > 0
        if used.sum() < 2:
            continue
        lengths = huffman.code_lengths(counts)
        assert lengths.max() <= 15 and (lengths[~used] == 0).all() and (lengths[used] > 0).all()
        assert np.sum(2.0 ** -lengths[used].astype(float)) == 1.0  # complete prefix code
        bits, unlimited = int(np.dot(counts, lengths)), heap_huffman_bits(counts)
        loose = huffman.code_lengths(counts, max_bits=40)  # a limit that never binds
        assert int(np.dot(counts, loose)) == unlimited  # package-merge is optimal
        assert bits == unlimited if loose.max() <= 15 else bits > unlimited


@functools.cache
def realistic_streams() -> dict[str, np.ndarray]:
    """Gap and value streams of pruned + clustered tensors, and dense cluster indices."""
    rng = np.random.default_rng(5)
    out = {}
    for label, shape, density, gap_bits in (
        ("conv", (256, 128, 3, 3), 0.35, 8),
        ("fc", (1024, 1024), 0.1, 5),
    ):
        w = pruned_clustered(rng, shape, density=density)
        book, idx = _cnative.codebook_index(w.view(np.uint32))
        fill = int(np.argmax(np.bincount(idx)))
        gaps, vals, _ = codecs.sparse_entries(idx, book, fill, gap_bits)
        out[f"{label} gaps"], out[f"{label} values"] = gaps, vals
    normal = rng.normal(0, 1, 500_000)  # k-means-like: Gaussian weights on 32 linear levels
    out["dense indices"] = np.clip(np.round(normal * 5 + 16), 0, 31).astype(np.uint8)
    return out


@pytest.mark.parametrize("name", list(realistic_streams()))
def test_coded_size_within_5_percent_of_entropy(name: str) -> None:
    sym = realistic_streams()[name]
    p = huffman.plan(huffman.histogram(sym))
    stream = huffman.encode(sym, p)
    table = len(stream) - (p.bits + 7) // 8
    assert table <= 8 + 2 + 128 + 8
    assert p.bits <= 1.05 * p.entropy_bits, (p.bits, p.entropy_bits)
    assert np.array_equal(huffman.decode(Cursor(memoryview(stream))), sym)


def test_one_symbol_stream_stores_no_bits() -> None:
    sym = np.full(10_000, 9, dtype=np.uint8)
    stream = huffman.encode(sym)
    assert len(stream) <= 6  # count, alphabet, a 3-token table, zero payload length
    assert np.array_equal(huffman.decode(Cursor(memoryview(stream))), sym)


def test_stream_alphabet_over_the_limit_is_a_payload_error() -> None:
    stream = huffman.encode(np.arange(10, dtype=np.uint8))
    with pytest.raises(PayloadError):
        huffman.decode(Cursor(memoryview(stream)), max_alphabet=4)
