"""Magnitude pruning masks (Han et al., "Learning both Weights and Connections", NIPS 2015).

Computing a mask is separate from applying it (Distiller's lesson). A mask is a boolean array
of the weight's shape, True where the weight is KEPT. Pure numpy, no ONNX.

- `magnitude_mask(w, s)`: prunes exactly round(s * w.size) weights, the smallest |w| first;
  ties at the threshold are broken by flat index, so the count is exact.
- `global_threshold(ws, s)` + `threshold_mask(w, t)`: one magnitude threshold t over several
  tensors, pruning every |w| <= t so that about s of the pooled weights go (exact up to ties).
- `apply_mask(w, keep)`: pruned entries become +0.0 exactly (never -0.0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_ratio(sparsity: float, what: str = "sparsity") -> float:
    """A pruning ratio in [0, 1]; raises ValueError naming the bad value."""
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {sparsity!r}")
    return s


def prune_count(size: int, sparsity: float) -> int:
    """How many of `size` weights a ratio prunes (rounded to the nearest integer)."""
    return min(size, round(check_ratio(sparsity) * size))


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask pruning exactly `prune_count(w.size, sparsity)` smallest-magnitude weights."""
    a = np.abs(w).reshape(-1)
    k = prune_count(a.size, sparsity)
    if k == 0:
        return np.ones(w.shape, dtype=bool)
    if k == a.size:
        return np.zeros(w.shape, dtype=bool)
    t = np.partition(a, k - 1)[k - 1]  # the k-th smallest magnitude
    keep = a > t
    ties = np.flatnonzero(a == t)
    below = a.size - int(keep.sum()) - ties.size  # strictly smaller than t: always pruned
    keep[ties[k - below :]] = True  # prune only as many ties as needed to reach k
    return keep.reshape(w.shape)


def global_threshold(weights: Sequence[np.ndarray], sparsity: float) -> float:
    """Magnitude t such that pruning |w| <= t prunes `sparsity` of all weights pooled.

    Plain global magnitude: no per-layer normalization, so layers whose weights are small in
    absolute terms (typically wide fully connected layers) are pruned hardest. Returns -inf
    when nothing is to be pruned.
    """
    total = sum(int(w.size) for w in weights)
    k = prune_count(total, sparsity)
    if k == 0 or total == 0:
        return float("-inf")
    pooled = np.concatenate([np.abs(w).reshape(-1).astype(np.float32, copy=False) for w in weights])
    return float(np.partition(pooled, k - 1)[k - 1])


def threshold_mask(w: np.ndarray, threshold: float) -> np.ndarray:
    """Keep-mask of the weights whose magnitude is strictly above `threshold`."""
    return np.abs(w) > threshold


def apply_mask(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`w` with the pruned entries set to +0.0 (multiplying by the mask would give -0.0)."""
    if keep.shape != w.shape:
        raise ValueError(f"mask shape {keep.shape} does not match weight shape {w.shape}")
    return np.where(keep, w, np.zeros((), dtype=w.dtype))


def sparsity_of(w: np.ndarray) -> float:
    """Fraction of entries that are exactly zero."""
    return float(1.0 - np.count_nonzero(w) / w.size) if w.size else 0.0
