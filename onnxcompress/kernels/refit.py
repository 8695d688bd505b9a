"""Least-squares re-estimation of a pruned layer's kept weights and bias (layer-wise
reconstruction, as in AdaPrune: Hubara et al., NeurIPS 2021, and OBC: Frantar & Alistarh,
NeurIPS 2022, here solved in closed form per output row).

A Conv or fully connected layer maps input rows x (im2col patches for a Conv) to y = W x + b.
After pruning, row o of W may only use the kept inputs S_o. With calibration rows X' (the
layer's input in the compressed network, a column of ones appended for the bias) and targets
Y (the ORIGINAL layer's outputs on the original network's inputs), each row solves

    min_{w, b} || X'_S w + b - Y_o ||^2 + lam ||w - w0_S||^2,
    i.e. (G[S+, S+] + lam I) [w; b] = R[S+, o] + lam [w0_S; 0],   G = X'^T X',  R = X'^T Y,

with S+ = S_o plus the bias column, w0 the original weights (the ridge pulls toward them,
not toward 0, so a large lam degrades gracefully to bias correction) and lam = damp * (mean
input variance * rows); the bias is not penalized. Only the Gram G and the
cross term R are needed, so the calibration data streams through once. The fitted bias makes
the residual mean zero, so this subsumes bias correction. Pure numpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bias import conv_output_size

SOLVE_BUDGET = 1 << 24  # float64 elements per batched solve (128 MB)
CG_ITERS = 30  # conjugate-gradient polish after the OBS sweep (measured: within 0.1% of exact)
SWEEP_BLOCK = 128  # columns per lazy batch of the OBS/GPTQ sweeps
MAX_DAMP_RAISES = 6  # tenfold ridge raises tried when H is numerically indefinite
CG_TOL = 1e-8  # conjugate gradient stops once every row's residual fell this far
# Cost model of the two paths, from timings of both on layers 384 to 1536 wide (65 to 1536
# rows, 30-90% pruned): the row by row solves pay numpy's per-matrix overhead; the whole-layer
# path runs as large GEMMs and its conjugate gradient usually stops well before CG_ITERS, so
# its flop count (taken at CG_ITERS) overstates it. The row-by-row path is exact, the other
# close but not always as close (LeNet-5's convolutions lose 0.4 points more after pruning
# with it), so a layer takes it only when it is the cheaper by these figures.
EXACT_FLOPS, FAST_FLOPS = 6.7e9, 7.6e10


def im2col(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(B * positions, C * prod(kernel)) patches of x (B, C, *spatial), in the order of
    weight.reshape(O, -1) (channel-major, then kernel offsets); with `rows`, only those rows
    (flat indices over (B, *positions)), built directly: a sample of a large layer's rows costs
    what the sample holds, not the whole matrix."""
    d = len(kernel)
    b, c = x.shape[:2]
    begins, ends = pads[:d], pads[d:]
    padded = np.pad(x, [(0, 0), (0, 0)] + [(p, q) for p, q in zip(begins, ends)])
    outs = [
        conv_output_size(x.shape[2 + i], kernel[i], strides[i], begins[i], ends[i], dilations[i])
        for i in range(d)
    ]
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    if rows is not None:
        sample, *where = np.unravel_index(rows, (b, *outs))
        # channels last: each gathered patch element is then one contiguous run of C values
        last = np.ascontiguousarray(np.moveaxis(padded, 1, -1))
        cols = [last[(sample,) + tuple(
                    p * s + o * dil for p, s, o, dil in zip(where, strides, offset, dilations))]
                for offset in offsets]  # each (rows, C)
        return np.stack(cols, axis=2).reshape(len(rows), c * len(cols))
    cols = []
    for offset in offsets:
        window = (slice(None), slice(None)) + tuple(
            slice(o * dil, o * dil + (n - 1) * s + 1, s)
            for o, dil, n, s in zip(offset, dilations, outs, strides)
        )
        cols.append(padded[window])  # (B, C, *outs)
    patches = np.stack(cols, axis=2)  # (B, C, K_off, *outs)
    order = (0, *range(3, 3 + d), 1, 2)
    return patches.transpose(order).reshape(b * int(np.prod(outs)), c * len(cols))


def with_ones(rows: np.ndarray) -> np.ndarray:
    """Rows with a trailing column of ones (the bias feature), as float64."""
    return np.hstack([rows.astype(np.float64), np.ones((rows.shape[0], 1))])


def ridge_scale(gram: np.ndarray) -> float:
    """Mean input variance times the row count: diag of the CENTERED Gram, averaged. (The
    uncentered energy of ReLU features is dominated by their mean, which the bias absorbs.)"""
    k = gram.shape[0] - 1
    if k == 0 or gram[k, k] <= 0:
        return 0.0
    centered = np.diag(gram)[:k] - gram[:k, k] ** 2 / gram[k, k]
    return float(np.mean(np.maximum(centered, 0.0)))


def masked_lstsq(
    gram: np.ndarray,
    cross: np.ndarray,
    keep: np.ndarray,
    damp: float = 0.01,
    prior: np.ndarray | None = None,
    quick: bool = False,
    ridge: Ridge | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ridge least squares on the kept inputs; returns W (O, K) and b (O,).

    gram: (K+1, K+1) Gram of the input rows with the ones column last; cross: (K+1, O);
    keep: (O, K) boolean; prior: (O, K) weights the ridge pulls toward (default 0).
    Pruned entries of W are +0.0 exactly. Solved row by row on the kept inputs, or, when that
    costs more (many rows, wide fan-in), by `_obs_then_cg` on the whole layer at once; `quick`
    stops after that path's OBS sweep (an estimate, a few times the optimum's error on very
    correlated inputs, for searches that only compare settings). `ridge`, when given, is
    `ridge_optimum(gram, cross, damp, prior)` computed once for many masks.
    """
    o, k = keep.shape
    lam = max(damp * ridge_scale(gram), 1e-12)
    counts = keep.sum(axis=1).astype(np.float64)
    per_row = float(((counts + 1) ** 3).sum()) / 3 / EXACT_FLOPS
    whole = (3.0 * (k + 1) ** 3 + 2 * CG_ITERS * o * (k + 1) ** 2) / FAST_FLOPS
    if quick or whole < per_row:
        ridge = ridge or ridge_optimum(gram, cross, damp, prior)
        return _obs_then_cg(ridge, keep, 0 if quick else CG_ITERS)
    weights = np.zeros((o, k))
    bias = np.zeros(o)
    counts = keep.sum(axis=1)
    order = np.argsort(counts)
    start = 0
    while start < o:
        sizes = (counts[order[start:]] + 1.0) ** 2  # ascending: a chunk's last row is widest
        fits = np.arange(1, sizes.size + 1) * sizes <= SOLVE_BUDGET
        rows = max(1, int(np.argmin(fits)) if not fits.all() else sizes.size)
        chunk = order[start : start + rows]
        width = int(counts[chunk].max()) + 1
        pull = None if prior is None else prior[chunk]
        w, b = _solve_rows(gram, cross, keep[chunk], chunk, width, lam, pull)
        weights[chunk] = w
        bias[chunk] = b
        start += len(chunk)
    return weights, bias


def _solve_rows(
    gram: np.ndarray,
    cross: np.ndarray,
    keep: np.ndarray,
    rows: np.ndarray,
    width: int,
    lam: float,
    prior: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Batched solve for rows whose kept sets are padded to `width - 1` (+ the bias)."""
    m, k = keep.shape
    idx = np.full((m, width), k)  # padding points at the bias column, masked out below
    valid = np.zeros((m, width), dtype=bool)
    for i in range(m):
        s = np.flatnonzero(keep[i])
        idx[i, : s.size] = s
        valid[i, : s.size] = True
    valid[:, -1] = True  # the last slot is the bias
    idx[:, -1] = k
    a = gram[idx[:, :, None], idx[:, None, :]] * (valid[:, :, None] & valid[:, None, :])
    diag = np.where(valid, 0.0, 1.0)  # identity on padding: solution 0 there
    diag[:, :-1] += lam * valid[:, :-1]  # ridge on the weights, not on the bias
    a[:, np.arange(width), np.arange(width)] += diag
    rhs = cross[idx, rows[:, None]] * valid
    if prior is not None:  # ridge toward the prior: + lam * w_prior on the kept weights
        padded = np.concatenate([prior, np.zeros((m, 1))], axis=1)
        rhs[:, :-1] += lam * np.take_along_axis(padded, idx[:, :-1], axis=1) * valid[:, :-1]
    try:
        sol = np.linalg.solve(a, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        sol = np.stack([np.linalg.lstsq(a[i], rhs[i], rcond=None)[0] for i in range(m)])
    w = np.zeros((m, k))
    for i in range(m):
        n = int(valid[i, :-1].sum())
        w[i, idx[i, :n]] = sol[i, :n]
    return w, sol[:, -1]


@dataclass(frozen=True)
class Ridge:
    """What every mask or codebook of one layer's refit shares: the ridge Hessian H (the bias
    unpulled), the unmasked optimum rows W* (O, K+1), the upper Cholesky factor U of H^-1."""

    h: np.ndarray
    target: np.ndarray
    upper: np.ndarray


def ridge_optimum(gram: np.ndarray, cross: np.ndarray, damp: float = 0.01,
                  prior: np.ndarray | None = None) -> Ridge:
    k = gram.shape[0] - 1
    lam = max(damp * ridge_scale(gram), 1e-12)
    for attempt in range(MAX_DAMP_RAISES):
        reg = np.full(k + 1, lam)
        reg[-1] = 0.0
        h = gram + np.diag(reg)
        try:
            upper = inverse_factor(h)
            break
        except np.linalg.LinAlgError:  # rounding left H indefinite: a larger ridge fixes it
            if attempt == MAX_DAMP_RAISES - 1:
                raise  # the caller reports the layer
            lam *= 10
    rhs = cross.astype(np.float64)
    if prior is not None:
        rhs = rhs.copy()
        rhs[:k] += lam * prior.T
    return Ridge(h, (upper.T @ (upper @ rhs)).T, upper)  # H^-1 = U^T U: no second factoring


def inverse_factor(h: np.ndarray) -> np.ndarray:
    """Upper triangular U with H^-1 = U^T U, without forming H^-1: with M the Cholesky
    factor of H with rows and columns reversed (J H J = M M^T), U = J M^-1 J. Inverting H
    first (then factoring) fails once H's condition number passes about 1e8 (the rounding of
    the inverse exceeds its smallest eigenvalue: a 2048-wide classifier fed 250 rows)."""
    m = np.linalg.cholesky(h[::-1, ::-1])
    return np.triu(np.linalg.inv(m)[::-1, ::-1])  # (inv leaves rounding below the diagonal)


def quantize_lstsq(gram: np.ndarray, cross: np.ndarray, keep: np.ndarray, codebook: np.ndarray,
                   damp: float = 0.01, prior: np.ndarray | None = None,
                   ridge: Ridge | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weights restricted to `codebook` values (zeros where `keep` is False) that reproduce the
    targets, and the bias: GPTQ's sweep (Frantar et al., ICLR 2023) with a k-means codebook as
    the grid. From the unmasked ridge optimum, column by column, each weight goes to its
    nearest codebook value and the error moves into the later columns and the bias,

        err = (w[j] - q[j]) / U[j, j];   w[j:] -= err * U[j, j:]

    so the layer's outputs, not each weight, stay close. Same arguments as `masked_lstsq`;
    `codebook` holds the nonzero values a kept weight may take."""
    ridge = ridge or ridge_optimum(gram, cross, damp, prior)
    book = np.sort(np.asarray(codebook, dtype=np.float64).reshape(-1))
    return _sweep(ridge.target, ridge.upper, keep, lambda column: _nearest(book, column))


def _nearest(book: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The value of sorted `book` nearest to each x."""
    if len(book) == 1:
        return np.full(len(x), book[0])
    i = np.clip(np.searchsorted(book, x), 1, len(book) - 1)
    lo, hi = book[i - 1], book[i]
    return np.where(np.abs(x - lo) <= np.abs(hi - x), lo, hi)


def _obs_then_cg(ridge: Ridge, keep: np.ndarray, iters: int = CG_ITERS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The same solution for the whole layer at once: the ridge optimum W* without a mask,
    then the Optimal Brain Surgeon sweep of SparseGPT (Frantar & Alistarh, ICML 2023) that
    zeros the pruned weights column by column and moves the later ones to compensate, using
    the Cholesky factor U of H^-1 (H^-1 = U^T U):

        err = w[j] / U[j, j];   w[j:] -= err * U[j, j:]

    which leaves some error because earlier kept weights never move again, then conjugate-
    gradient steps on (w - w*)^T H (w - w*) over the kept weights (Jacobi preconditioned, all
    rows at once) that remove it."""
    o, k = keep.shape
    swept, bias = _sweep(ridge.target, ridge.upper, keep, lambda column: column)
    mask = np.hstack([keep, np.ones((o, 1), dtype=bool)])
    w = _conjugate_gradient(ridge.h, ridge.target, np.hstack([swept, bias[:, None]]) * mask,
                            mask, iters)
    w[:, :k][~keep] = 0.0
    return w[:, :k], w[:, k]


def _sweep(w: np.ndarray, upper: np.ndarray, keep: np.ndarray, value, block: int = SWEEP_BLOCK
           ) -> tuple[np.ndarray, np.ndarray]:
    """Columns 0..K-1 of `w` (O, K+1) set one by one to their target t[j]: value(w[:, j]) where
    `keep` (O, K) holds, else 0; each change's error moved into the later columns through the
    Cholesky factor `upper` of H^-1:

        err = (w[j] - t[j]) / U[j, j];   w[j:] -= err * U[j, j:]

    in blocks (SparseGPT's lazy batch updates): inside a block only its own columns move, the
    rest of the row takes the block's errors in one product. Worked on w transposed, so that a
    column is contiguous. Returns (weights, bias)."""
    k = keep.shape[1]
    kept = np.ascontiguousarray(keep.T)
    wt = np.array(w.T, dtype=np.float64, order="C")  # (K+1, O)
    for start in range(0, k, block):
        end = min(start + block, k)
        errs = np.empty((end - start, wt.shape[1]))
        for j in range(start, end):
            t = np.where(kept[j], value(wt[j]), 0.0)
            err = (wt[j] - t) / upper[j, j]
            wt[j + 1:end] -= upper[j, j + 1:end, None] * err
            wt[j] = t
            errs[j - start] = err
        wt[end:] -= upper[start:end, end:].T @ errs
    return np.ascontiguousarray(wt[:k].T), wt[k].copy()


def _conjugate_gradient(h: np.ndarray, target: np.ndarray, w: np.ndarray, mask: np.ndarray,
                        iters: int = CG_ITERS) -> np.ndarray:
    """min over the masked entries of each row of (w - target) H (w - target)^T."""
    m = mask.astype(np.float64)
    dinv = 1.0 / np.diag(h)
    r = -((w - target) @ h) * m
    z = r * dinv
    p = z.copy()
    rz = (r * z).sum(axis=1)
    start = float(rz.max(initial=0.0))
    for _ in range(iters):
        if float(rz.max(initial=0.0)) <= CG_TOL * start:
            break
        hp = (p @ h) * m
        denom = (p * hp).sum(axis=1)
        alpha = np.divide(rz, denom, out=np.zeros_like(rz), where=denom > 0)
        w = w + alpha[:, None] * p
        r = r - alpha[:, None] * hp
        z = r * dinv
        rz_new = (r * z).sum(axis=1)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta[:, None] * p
        rz = rz_new
    return w
