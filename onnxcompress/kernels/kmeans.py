"""1-D k-means weight sharing (Han et al., "Deep Compression", ICLR 2016, section 3).

Lloyd's algorithm minimizes sum_i |w_i - c_{a(i)}|^2. In one dimension the clusters of sorted
values are contiguous runs split at the midpoints (c_j + c_{j+1}) / 2, so on a sorted sample one
iteration is k binary searches plus prefix sums: O(k log n) instead of O(n k). Centroids start
LINEARLY spaced between min and max, which Deep Compression found best because it keeps the few
large weights (which matter most) represented.

`share_weights` applies this to a weight tensor: exact zeros (pruned weights) never enter the
clustering and stay exactly zero. The returned codebook has at most 2**bits entries: when the
tensor holds zeros, entry 0 is 0.0 and the nonzeros share at most 2**bits - 1 centroids;
otherwise all 2**bits entries are centroids. Either way every index fits in `bits` bits.

Big tensors are fitted on a random sample (`fit_samples`); the assignment and a final exact
centroid update use every value, in chunks, so memory stays a few bytes per weight.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 22  # values per chunk in the full-tensor passes


def linear_init(lo: float, hi: float, k: int) -> np.ndarray:
    """k centroids evenly spaced over [lo, hi] (float64)."""
    if k < 1:
        raise ValueError(f"need at least one centroid, got k={k}")
    return np.linspace(lo, hi, k, dtype=np.float64)


def lloyd_sorted(
    xs: np.ndarray, init: np.ndarray, iters: int = 1000, tol: float = 1e-9
) -> np.ndarray:
    """Lloyd iterations on sorted values `xs` from sorted centroids `init`.

    An empty cluster keeps its centroid (it lies strictly between its neighbours, so the
    centroids stay sorted). Stops when no centroid moves more than tol * (max - min).
    """
    c = np.array(init, dtype=np.float64)
    if xs.size == 0 or c.size == 1:
        return np.array([xs.mean()]) if xs.size and c.size == 1 else c
    prefix = np.concatenate([[0.0], np.cumsum(xs, dtype=np.float64)])
    span = float(xs[-1] - xs[0]) or 1.0
    for _ in range(iters):
        bounds = np.concatenate([[0], np.searchsorted(xs, (c[1:] + c[:-1]) / 2), [xs.size]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        moved = float(np.max(np.abs(new - c)))
        c = new
        if moved <= tol * span:
            break
    return c


def _stats(
    xs: np.ndarray, prefix: np.ndarray, prefix2: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, sum and sum of squared deviations of each centroid's run of sorted values."""
    bounds = np.concatenate([[0], np.searchsorted(xs, (c[1:] + c[:-1]) / 2), [xs.size]])
    counts = np.diff(bounds).astype(np.float64)
    sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
    sq = prefix2[bounds[1:]] - prefix2[bounds[:-1]]
    sse = np.maximum(sq - sums**2 / np.maximum(counts, 1), 0.0)
    return counts, sums, sse


def refill_empty(xs: np.ndarray, c: np.ndarray, iters: int = 1000, rounds: int = 8) -> np.ndarray:
    """Move centroids left empty (e.g. inside the gap that pruning leaves around zero) into the
    clusters with the largest squared error, splitting each at mean ± std/2, then re-run Lloyd.

    A departure from plain Deep Compression, which leaves such codes unused.
    """
    prefix2 = np.concatenate([[0.0], np.cumsum(xs * xs, dtype=np.float64)])
    prefix = np.concatenate([[0.0], np.cumsum(xs, dtype=np.float64)])
    k = c.size
    for _ in range(rounds):
        counts, sums, sse = _stats(xs, prefix, prefix2, c)
        empty = int((counts == 0).sum())
        if empty == 0:
            break
        live = counts > 0
        c, counts, sums, sse = c[live], counts[live], sums[live], sse[live]
        splittable = np.flatnonzero(counts >= 2)
        pick = splittable[np.argsort(sse[splittable])[::-1][:empty]]
        if pick.size == 0:
            break
        std = np.sqrt(sse[pick] / counts[pick])
        mean = sums[pick] / counts[pick]
        keep = np.setdiff1d(np.arange(c.size), pick)
        c = np.unique(np.concatenate([c[keep], mean - std / 2, mean + std / 2]))
        c = lloyd_sorted(xs, c, iters)
    return c if c.size <= k else c[:k]


def fit_sample(x: np.ndarray, fit_samples: int, seed: int) -> np.ndarray:
    """Sorted float64 sample of at most `fit_samples` values of `x`, always holding min and max."""
    flat = x.reshape(-1)
    if flat.size <= fit_samples:
        return np.sort(flat.astype(np.float64))
    rng = np.random.default_rng(seed)
    pick = flat[rng.integers(0, flat.size, size=fit_samples)].astype(np.float64)
    return np.sort(np.concatenate([pick, [flat.min(), flat.max()]]))


def kmeans_1d(
    x: np.ndarray, k: int, *, iters: int = 1000, fit_samples: int = 1 << 20, seed: int = 0
) -> np.ndarray:
    """Sorted centroids of 1-D k-means on `x` with linear initialization (fitted on a sample)."""
    xs = fit_sample(x, fit_samples, seed)
    if xs.size == 0:
        raise ValueError("cannot cluster an empty array")
    return lloyd_sorted(xs, linear_init(xs[0], xs[-1], k), iters)


def assign(x: np.ndarray, centroids: np.ndarray, dtype: type | np.dtype = np.int64) -> np.ndarray:
    """Index of the nearest centroid for every value (centroids sorted), same shape as x.

    Equals np.searchsorted(midpoints, x) (a value on a midpoint goes to the lower centroid);
    a uniform lookup table over the midpoints' range gives a first guess that a few vectorized
    compare-and-step passes correct, which is several times faster than binary search.
    """
    mids = (centroids[1:] + centroids[:-1]) / 2
    flat = x.reshape(-1)
    out = np.empty(flat.size, dtype=dtype)
    table = _LookupTable(mids)
    for start in range(0, flat.size, CHUNK):
        out[start : start + CHUNK] = table.lookup(flat[start : start + CHUNK])
    return out.reshape(x.shape)


class _LookupTable:
    """Count of midpoints strictly below a value, via a uniform bin table plus corrections."""

    def __init__(self, mids: np.ndarray, bins_per_mid: int = 64):
        self.mids = mids
        self.ext = np.concatenate([mids, [np.inf]])  # ext[i] = upper boundary of centroid i
        self.low = np.concatenate([[-np.inf], mids])  # low[i] = lower boundary of centroid i
        span = float(mids[-1] - mids[0]) if mids.size else 0.0
        self.bins = max(1, bins_per_mid * mids.size)
        self.scale = self.bins / span if span > 0 else 0.0
        edges = mids[0] + np.arange(self.bins) / self.scale if self.scale else mids[:1]
        self.table = np.searchsorted(mids, edges).astype(np.int32)

    def lookup(self, x: np.ndarray) -> np.ndarray:
        if self.mids.size == 0:
            return np.zeros(x.size, dtype=np.int32)
        if not self.scale:
            return np.searchsorted(self.mids, x).astype(np.int32)
        pos = (x.astype(np.float64) - self.mids[0]) * self.scale
        idx = self.table[np.clip(pos, 0, self.bins - 1).astype(np.int32)]
        for _ in range(self.mids.size + 1):  # step up while x lies above the upper boundary
            up = x > self.ext[idx]
            if not up.any():
                break
            idx += up
        for _ in range(self.mids.size + 1):  # step down while x is at or below the lower one
            down = x <= self.low[idx]
            if not down.any():
                break
            idx -= down
        return idx


def cluster_means(
    x: np.ndarray, idx: np.ndarray, centroids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean of the values assigned to each centroid (unused ones kept), and the counts."""
    k = centroids.size
    sums = np.zeros(k)
    counts = np.zeros(k, dtype=np.int64)
    fx, fi = x.reshape(-1), idx.reshape(-1)
    for start in range(0, fx.size, CHUNK):
        i = fi[start : start + CHUNK].astype(np.intp)
        sums += np.bincount(i, weights=fx[start : start + CHUNK], minlength=k)
        counts += np.bincount(i, minlength=k)
    return np.where(counts > 0, sums / np.maximum(counts, 1), centroids), counts


def index_dtype(codebook_size: int) -> np.dtype:
    """Smallest unsigned integer type able to index `codebook_size` entries."""
    return np.dtype(
        np.uint8 if codebook_size <= 256 else np.uint16 if codebook_size <= 65536 else np.uint32
    )


def levels(bits: float) -> int:
    """Codebook entries for `bits`: 2**bits, rounded (a fractional width is a codebook size
    between two powers of two, which Huffman-coded indices store at about that many bits)."""
    return round(2.0 ** bits)


def share_weights(
    w: np.ndarray, bits: float, *, iters: int = 1000, fit_samples: int = 1 << 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Codebook (w.dtype) and indices (w.shape) with codebook[indices] ≈ w; zeros stay exact.

    Unused centroids are dropped, so the codebook may be shorter than 2**bits. When the
    nonzeros already take few enough distinct values the result is lossless.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in [1, 16], got {bits}")
    flat = w.reshape(-1)
    nonzero = flat != 0
    nz = flat[nonzero]
    has_zero = nz.size < flat.size
    k = levels(bits) - (1 if has_zero else 0)
    centroids = _centroids(nz, k, iters, fit_samples, seed) if nz.size else np.zeros(0)
    small = index_dtype(levels(bits))
    idx = assign(nz, centroids, small) if centroids.size else np.zeros(0, dtype=small)
    if centroids.size:
        centroids, counts = cluster_means(nz, idx, centroids)
        used = counts > 0
        remap = (np.cumsum(used) - 1).astype(small)
        centroids, idx = centroids[used], remap[idx]
    offset = 1 if has_zero else 0
    codebook = np.concatenate([np.zeros(offset), centroids]).astype(w.dtype)
    indices = np.zeros(flat.size, dtype=small)
    indices[nonzero] = idx + small.type(offset)
    return codebook, indices.reshape(w.shape)


def _centroids(nz: np.ndarray, k: int, iters: int, fit_samples: int, seed: int) -> np.ndarray:
    """k-means centroids of the nonzeros, or their exact distinct values if there are <= k."""
    xs = fit_sample(nz, fit_samples, seed)
    distinct = np.unique(xs)
    if distinct.size <= k:
        idx = assign(nz, distinct)
        if np.array_equal(distinct[idx], nz.astype(np.float64)):
            return distinct  # already shared (e.g. clustered twice): keep it lossless
    c = lloyd_sorted(xs, linear_init(xs[0], xs[-1], min(k, distinct.size)), iters)
    return refill_empty(xs, c, iters)


def share_rows(w: np.ndarray, bits: float, *, iters: int = 1000, fit_samples: int = 1 << 20,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row-standardized sharing of a table (R, D): every row keeps its own mean and standard
    deviation, and one codebook serves the standardized values of all rows,

        w[r] ~ mean[r] + std[r] * codebook[indices[r]]          (`rows_value`)

    so rows of very different scales (an embedding's frequent and rare tokens) are shared with
    the same relative precision. Returns (codebook, indices, mean, std): a float32 codebook,
    and the row statistics in float16 where every deviation is a normal float16 (a relative
    error of 2^-11, far below the codebook's), else float32 (`row_stats_dtype`)."""
    w32 = w.astype(np.float32)
    mean = w32.mean(axis=1, keepdims=True, dtype=np.float64)
    std = w32.std(axis=1, keepdims=True, dtype=np.float64)
    std[std == 0] = 1.0
    dtype = row_stats_dtype(mean, std)
    mean, std = mean.astype(dtype), std.astype(dtype)
    # standardized by the statistics as stored, so the codebook fits what the graph decodes
    z = (w32 - mean.astype(np.float32)) / std.astype(np.float32)
    codebook, indices = share_weights(z, bits, iters=iters, fit_samples=fit_samples, seed=seed)
    return codebook.astype(np.float32), indices, mean, std


def row_stats_dtype(mean: np.ndarray, std: np.ndarray) -> type:
    """float16 when every row's deviation is a normal float16 and no mean overflows it."""
    f16 = np.finfo(np.float16)
    fits = (std.min() >= f16.smallest_normal and std.max() <= f16.max
            and np.abs(mean).max() <= f16.max)
    return np.float16 if fits else np.float32


def rows_value(codebook: np.ndarray, indices: np.ndarray, mean: np.ndarray, std: np.ndarray
               ) -> np.ndarray:
    """The table `share_rows` encodes, computed as the graph decodes it (the statistics cast
    to float32, exactly; Mul, then Add, in float32), so both give the same bits."""
    return codebook[indices] * std.astype(np.float32) + mean.astype(np.float32)
