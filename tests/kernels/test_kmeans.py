"""1-D k-means: linear init, exact Lloyd on sorted data, weight sharing with zeros kept out."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.kernels.kmeans import assign, kmeans_1d, linear_init, lloyd_sorted, share_weights


def brute_lloyd(x: np.ndarray, c: np.ndarray, iters: int) -> np.ndarray:
    """Textbook O(n k) Lloyd with empty clusters kept in place."""
    c = c.copy()
    for _ in range(iters):
        a = np.abs(x[:, None] - c[None, :]).argmin(axis=1)
        c = np.array([x[a == j].mean() if (a == j).any() else c[j] for j in range(c.size)])
    return c


def test_linear_init_spans_min_to_max() -> None:
    x = np.random.default_rng(0).normal(size=1000)
    c = kmeans_1d(x, 8, iters=0)  # no Lloyd step: the initialization itself
    np.testing.assert_allclose(c, np.linspace(x.min(), x.max(), 8))
    np.testing.assert_allclose(linear_init(-1, 1, 3), [-1, 0, 1])


def test_sorted_lloyd_matches_brute_force() -> None:
    x = np.sort(np.random.default_rng(1).standard_t(3, size=3000))
    init = linear_init(x[0], x[-1], 16)
    np.testing.assert_allclose(
        lloyd_sorted(x, init, iters=25), brute_lloyd(x, init, 25), rtol=1e-9, atol=1e-12
    )


def test_finds_separated_clusters() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(m, 0.01, 500) for m in (-1.0, 0.2, 3.0)])
    np.testing.assert_allclose(kmeans_1d(x, 3), [-1.0, 0.2, 3.0], atol=0.005)


def test_assign_is_nearest_centroid() -> None:
    x = np.random.default_rng(3).normal(size=(50, 40))
    c = np.array([-1.5, -0.2, 0.1, 2.0])
    np.testing.assert_array_equal(assign(x, c), np.abs(x[..., None] - c).argmin(axis=-1))


@pytest.mark.parametrize("bits", [2, 5, 8])
def test_share_weights_keeps_zeros_out_of_the_codebook(bits: int) -> None:
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.05, (64, 3, 5, 5)).astype(np.float32)
    w[np.abs(w) < 0.04] = 0.0
    codebook, idx = share_weights(w, bits)
    out = codebook[idx]
    assert codebook[0] == 0.0 and codebook.size <= 2**bits
    assert np.count_nonzero(codebook) <= 2**bits - 1
    np.testing.assert_array_equal(out == 0, w == 0)  # zeros exactly where they were
    assert not np.signbit(out[out == 0]).any()
    assert idx.dtype == np.uint8 and out.dtype == np.float32
    assert len(np.unique(out[out != 0])) <= 2**bits - 1


def test_quantization_error_is_small() -> None:
    w = np.random.default_rng(5).normal(0, 1, 200_000).astype(np.float32)
    for bits, bound in ((5, 0.052), (8, 0.01)):
        codebook, idx = share_weights(w, bits)
        assert codebook.size == 2**bits  # no zeros: every code is a centroid
        rel = np.sqrt(np.mean((codebook[idx] - w) ** 2)) / np.sqrt(np.mean(w**2))
        assert rel < bound, (bits, rel)


def test_all_codes_used_after_pruning_gap() -> None:
    w = np.random.default_rng(6).normal(0, 1, 100_000).astype(np.float32)
    w[np.abs(w) < 1.0] = 0.0  # a wide gap around zero that linear init fills with dead codes
    codebook, _ = share_weights(w, 5)
    assert codebook.size == 32


def test_sampled_fit_on_big_tensor_is_close_to_full_fit() -> None:
    w = np.random.default_rng(7).laplace(0, 1, 600_000).astype(np.float32)
    full, idx_full = share_weights(w, 5, fit_samples=1 << 21)
    sampled, idx_s = share_weights(w, 5, fit_samples=100_000)
    err_full = np.mean((full[idx_full] - w) ** 2)
    err_s = np.mean((sampled[idx_s] - w) ** 2)
    assert err_s < 1.2 * err_full  # a sample of 1/6 lands in a similar optimum


def test_few_distinct_values_are_lossless_and_idempotent() -> None:
    w = np.random.default_rng(8).choice([-0.5, 0.0, 0.25, 1.0], size=(30, 30)).astype(np.float32)
    codebook, idx = share_weights(w, 2)
    np.testing.assert_array_equal(codebook[idx], w)
    w2 = np.random.default_rng(9).normal(size=4000).astype(np.float32)
    cb, ix = share_weights(w2, 4)
    cb2, ix2 = share_weights(cb[ix], 4)
    np.testing.assert_array_equal(cb2[ix2], cb[ix])


def test_all_zero_and_bad_bits() -> None:
    codebook, idx = share_weights(np.zeros((3, 4), np.float32), 4)
    np.testing.assert_array_equal(codebook, [0.0])
    assert not idx.any()
    with pytest.raises(ValueError, match="bits"):
        share_weights(np.ones(4, np.float32), 0)


@pytest.mark.parametrize(
    "centroids",
    [
        np.sort(np.random.default_rng(10).normal(0, 0.01, 255)),
        np.array([-1.0, -1e-9, 0.0, 1e-9, 1.0]),  # midpoints far closer than the table's bins
        np.array([0.0, 1.0]),
        np.array([0.5]),
    ],
)
def test_lookup_table_assign_equals_searchsorted(centroids: np.ndarray) -> None:
    x = np.random.default_rng(11).normal(0, 0.02, 100_000).astype(np.float32)
    mids = (centroids[1:] + centroids[:-1]) / 2
    x = np.concatenate([x, mids.astype(np.float32), centroids.astype(np.float32), [-5, 5]])
    np.testing.assert_array_equal(assign(x, centroids, np.uint8), np.searchsorted(mids, x))


def test_row_statistics_are_float16_where_they_fit() -> None:
    from onnxcompress.kernels.kmeans import rows_value, share_rows

    rng = np.random.default_rng(12)
    table = rng.normal(0, 1, (300, 48)).astype(np.float32) * rng.uniform(0.01, 0.2, (300, 1))
    book, idx, mean, std = share_rows(table, 5)
    assert mean.dtype == std.dtype == np.float16
    decoded = rows_value(book, idx, mean, std)
    assert decoded.dtype == np.float32
    rel = np.linalg.norm(decoded - table) / np.linalg.norm(table)
    assert rel < 0.1
    # the same error as with float32 statistics, within a few percent: half the bytes for free
    wide = table.copy()
    wide[0] *= 1e-4  # a deviation below float16's normal range: float32 for every row
    book32, idx32, mean32, std32 = share_rows(wide, 5)
    assert mean32.dtype == std32.dtype == np.float32
    rel32 = (np.linalg.norm(rows_value(book32, idx32, mean32, std32)[1:] - table[1:])
             / np.linalg.norm(table[1:]))
    assert abs(rel - rel32) < 0.03 * rel32
    huge = table + 1e5  # a mean past float16's largest value
    assert share_rows(huge, 5)[2].dtype == np.float32
