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

import numpy as np

from .bias import conv_output_size

SOLVE_BUDGET = 1 << 24  # float64 elements per batched solve (128 MB)


def im2col(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> np.ndarray:
    """(B * positions, C * prod(kernel)) patches of x (B, C, *spatial), in the order of
    weight.reshape(O, -1) (channel-major, then kernel offsets)."""
    d = len(kernel)
    b, c = x.shape[:2]
    begins, ends = pads[:d], pads[d:]
    padded = np.pad(x, [(0, 0), (0, 0)] + [(p, q) for p, q in zip(begins, ends)])
    outs = [
        conv_output_size(x.shape[2 + i], kernel[i], strides[i], begins[i], ends[i], dilations[i])
        for i in range(d)
    ]
    cols = []
    for offset in itertools.product(*(range(k) for k in kernel)):
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
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ridge least squares on the kept inputs; returns W (O, K) and b (O,).

    gram: (K+1, K+1) Gram of the input rows with the ones column last; cross: (K+1, O);
    keep: (O, K) boolean; prior: (O, K) weights the ridge pulls toward (default 0).
    Pruned entries of W are +0.0 exactly.
    """
    o, k = keep.shape
    lam = max(damp * ridge_scale(gram), 1e-12)
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
