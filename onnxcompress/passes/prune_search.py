"""How the prune pass chooses its masks, as functions from evaluators to masks (plain data).

An evaluator prunes, compensates and scores; the search only decides what to try:

- `drop_alone(name, keep)`: accuracy drop (points) with layer `name` pruned alone by `keep`;
- `drop_joint(masks)`: accuracy drop with every layer pruned by its mask.

Masks always come from the ORIGINAL weights (`originals`), never from refit ones. See
passes/prune.py for the method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..kernels.masks import global_threshold, magnitude_mask, threshold_mask

EPS = 1e-9  # points; scores are ratios of counts, so 100 * (a - b) carries rounding noise
DEFAULT_MAX_DROP = 0.5  # points on the calibration data, when sensitivity has no max_drop

Masks = dict[str, np.ndarray]
Curve = list[tuple[float, float]]  # (ratio, drop in points), ascending ratios


@dataclass
class SearchResult:
    masks: Masks
    drop: float | None = None  # joint drop of `masks`, when the search measured it
    pooled: float | None = None  # the pooled sparsity the search settled on
    threshold: float | None = None  # global magnitude threshold, for global masks
    curves: dict[str, Curve] = field(default_factory=dict)  # sensitivity scan per layer
    caps: dict[str, float] = field(default_factory=dict)  # largest ratio within tolerance
    note: str = ""


def uniform_masks(originals: Mapping[str, np.ndarray], ratios: Mapping[str, float]) -> Masks:
    """Per-layer magnitude masks of the original weights (layers at ratio 0 get none)."""
    return {name: magnitude_mask(w, ratios[name])
            for name, w in originals.items() if ratios.get(name, 0.0) > 0}


def global_masks(originals: Mapping[str, np.ndarray], pinned: Mapping[str, float],
                 sparsity: float) -> tuple[Masks, float]:
    """One magnitude threshold over the unpinned layers pooled (pooled sparsity `sparsity`);
    pinned layers keep their own ratio."""
    pool = {name: w for name, w in originals.items() if name not in pinned}
    t = global_threshold(list(pool.values()), sparsity)
    masks = {name: threshold_mask(w, t) for name, w in pool.items()}
    masks.update(uniform_masks({n: w for n, w in originals.items() if n in pinned}, pinned))
    return masks, t


def capped_global_masks(originals: Mapping[str, np.ndarray], caps: Mapping[str, float],
                        sparsity: float) -> Masks:
    """One magnitude threshold t over the layers in `caps`, each layer pruning no more than
    its cap: ratio_l = min(frac_l(|W| <= t), cap_l), with t chosen so that the pooled
    sparsity is `sparsity` (or every layer at its cap, if that is less)."""
    mags = {n: np.sort(np.abs(originals[n]).reshape(-1)) for n in caps}
    total = sum(m.size for m in mags.values())
    want = min(sparsity, 1.0) * total

    def pruned(t: float) -> float:
        return sum(min(np.searchsorted(m, t, side="right"), caps[n] * m.size)
                   for n, m in mags.items())

    lo, hi = 0.0, max((float(m[-1]) for m in mags.values() if m.size), default=0.0)
    for _ in range(60):  # bisection on t (floats: 60 halvings reach machine precision)
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pruned(mid) >= want else (mid, hi)
    ratios = {n: min(np.searchsorted(m, hi, side="right") / max(m.size, 1), caps[n])
              for n, m in mags.items()}
    return uniform_masks({n: originals[n] for n in caps}, ratios)


def scan(originals: Mapping[str, np.ndarray], names: list[str], ladder: tuple[float, ...],
         tolerance: float, drop_alone: Callable[[str, np.ndarray], float]
         ) -> dict[str, Curve]:
    """Per layer: [(ratio, drop)] pruning it alone, up to the first drop over `tolerance`."""
    curves: dict[str, Curve] = {}
    for name in names:
        curve = curves.setdefault(name, [])
        for ratio in ladder:
            drop = drop_alone(name, magnitude_mask(originals[name], ratio))
            curve.append((ratio, drop))
            if drop > tolerance + EPS:
                break
    return curves


def cap(curve: Curve, tolerance: float) -> float:
    """The largest ratio before the first rung over tolerance (0 if the first fails)."""
    best = 0.0
    for ratio, drop in curve:
        if drop > tolerance + EPS:
            break
        best = ratio
    return best


def bisect_budget(drop_at: Callable[[float], float], lo: float, hi: float, max_drop: float,
                  steps: int = 6) -> tuple[float, float]:
    """Largest x in [lo, hi] with drop_at(x) <= max_drop, assuming the drop grows with x and
    `hi` fails; returns (x, its drop). Falls back to `lo`, measured, if nothing passes."""
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        drop = drop_at(mid)
        if drop <= max_drop + EPS:
            best, lo = (mid, drop), mid
        else:
            hi = mid
    return best if best is not None else (lo, drop_at(lo))


def sensitivity_search(originals: Mapping[str, np.ndarray], pinned: Mapping[str, float],
                       ladder: tuple[float, ...], tolerance: float, max_drop: float | None,
                       drop_alone: Callable[[str, np.ndarray], float],
                       drop_joint: Callable[[Masks], float]) -> SearchResult:
    """Scan each unpinned layer alone for its cap, then prune jointly along one capped global
    threshold, backing off by bisection until the joint drop is within `max_drop`."""
    scanned = [n for n in originals if n not in pinned]
    curves = scan(originals, scanned, ladder, tolerance, drop_alone)
    caps = {n: cap(c, tolerance) for n, c in curves.items()}
    pinned_masks = uniform_masks(originals, pinned)
    budget = max_drop if max_drop is not None else DEFAULT_MAX_DROP

    def masks_at(pooled: float) -> Masks:
        return {**capped_global_masks(originals, caps, pooled), **pinned_masks}

    sizes = {n: originals[n].size for n in caps}
    full = sum(caps[n] * sizes[n] for n in caps) / max(sum(sizes.values()), 1)
    pooled, drop = full, drop_joint(masks_at(full))  # every layer at its cap
    if drop > budget + EPS:
        pooled, drop = bisect_budget(lambda p: drop_joint(masks_at(p)), 0.0, full, budget)
    note = (f"sensitivity: joint drop {drop:.2f} points at pooled sparsity {pooled:.3f} of the "
            f"scanned layers (caps at {full:.3f}; tolerance {tolerance:g} per layer, max_drop "
            f"{budget:g})")
    return SearchResult(masks_at(pooled), drop, pooled, None, curves, caps, note)


def global_search(originals: Mapping[str, np.ndarray], pinned: Mapping[str, float],
                  ladder: tuple[float, ...], max_drop: float,
                  drop_joint: Callable[[Masks], float]) -> SearchResult:
    """The largest pooled global sparsity (from the top of the ladder down, by bisection)
    whose joint drop is within `max_drop`."""
    ratio = ladder[-1]
    drop = drop_joint(global_masks(originals, pinned, ratio)[0])
    if drop > max_drop + EPS:
        ratio, drop = bisect_budget(lambda r: drop_joint(global_masks(originals, pinned, r)[0]),
                                    0.0, ratio, max_drop)
    masks, t = global_masks(originals, pinned, ratio)
    note = (f"global: searched the pooled sparsity for max_drop {max_drop:g}: {ratio:.3f} "
            f"(threshold {t:.6g}, joint drop {drop:.2f})")
    return SearchResult(masks, drop, ratio, t, note=note)
