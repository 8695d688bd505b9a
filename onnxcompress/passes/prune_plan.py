"""How the prune pass chooses its masks: per-layer ratios, one global threshold, or the
sensitivity scan with a joint accuracy budget (see passes/prune.py for the method)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInputError
from ..graph import Weight
from ..kernels.masks import (
    global_threshold,
    magnitude_mask,
    threshold_mask,
)

EPS = 1e-9  # points; scores are ratios of counts, so 100 * (a - b) carries rounding noise
DEFAULT_MAX_DROP = 0.5  # points on the calibration data, when sensitivity has no max_drop

if TYPE_CHECKING:
    from .prune import Config, _Pruner


def uniform_masks(
    originals: Mapping[str, np.ndarray], ratios: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """Per-layer magnitude masks of the ORIGINAL weights (the graph may hold refit ones)."""
    return {
        name: magnitude_mask(w, ratios[name])
        for name, w in originals.items()
        if ratios.get(name, 0.0) > 0
    }


def global_masks(
    originals: Mapping[str, np.ndarray], pinned: Mapping[str, float], sparsity: float
) -> tuple[dict[str, np.ndarray], float]:
    pool = {name: w for name, w in originals.items() if name not in pinned}
    t = global_threshold(list(pool.values()), sparsity)
    masks = {name: threshold_mask(w, t) for name, w in pool.items()}
    masks.update(uniform_masks({n: w for n, w in originals.items() if n in pinned}, pinned))
    return masks, t


def scan_layers(
    pruner: _Pruner, layers: list[Weight], ladder: tuple[float, ...], tolerance: float, base: float
) -> dict[str, list[tuple[float, float]]]:
    """Per layer: [(ratio, drop in points)] pruning it alone, up to the first drop > tolerance."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for i, w in enumerate(layers):
        curve = curves.setdefault(w.tensor.name, [])
        orig = pruner.originals[w.tensor.name]
        for ratio in ladder:
            pruner.alone(w, magnitude_mask(orig, ratio))
            drop = 100.0 * (base - pruner.ctx.score(pruner.graph))
            curve.append((ratio, drop))
            pruner.ctx.progress(
                f"prune: scan {i + 1}/{len(layers)} {w.layer} s={ratio:.2f} drop={drop:+.2f}"
            )
            if drop > tolerance + EPS:
                break
        pruner.restore(w)
    return curves


def allowed(curve: list[tuple[float, float]], tolerance: float) -> int:
    """Index of the largest rung before the first one over tolerance (-1 = none passes)."""
    best = -1
    for i, (_, drop) in enumerate(curve):
        if drop > tolerance + EPS:
            break
        best = i
    return best


def capped_global_masks(
    originals: Mapping[str, np.ndarray], caps: Mapping[str, float], sparsity: float
) -> dict[str, np.ndarray]:
    """One magnitude threshold t over the layers in `caps`, each layer pruning no more than
    its cap: ratio_l = min(frac_l(|W| <= t), cap_l), with t chosen so that the pooled
    sparsity is `sparsity` (or every layer at its cap, if that is less)."""
    mags = {n: np.sort(np.abs(originals[n]).reshape(-1)) for n in caps}
    total = sum(m.size for m in mags.values())
    want = min(sparsity, 1.0) * total

    def pruned(t: float) -> float:
        return sum(
            min(np.searchsorted(m, t, side="right"), caps[n] * m.size) for n, m in mags.items()
        )

    lo, hi = 0.0, max((float(m[-1]) for m in mags.values() if m.size), default=0.0)
    for _ in range(60):  # bisection on t (floats: 60 halvings reach machine precision)
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pruned(mid) >= want else (mid, hi)
    ratios = {
        n: min(np.searchsorted(m, hi, side="right") / max(m.size, 1), caps[n])
        for n, m in mags.items()
    }
    return uniform_masks({n: originals[n] for n in caps}, ratios)


def sensitivity_search(
    pruner: _Pruner,
    cfg: Config,
    pinned: Mapping[str, float],
    notes: list[str],
    facts: dict[str, dict[str, Any]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Scan for per-layer caps, then fit the joint drop; returns the masks and bias changes."""
    base = pruner.ctx.score(pruner.graph)
    scanned = [w for w in pruner.weights if w.tensor.name not in pinned]
    curves = scan_layers(pruner, scanned, cfg.ladder, cfg.tolerance, base)
    caps = {}
    for name, curve in curves.items():
        facts[name]["scan"] = {f"{r:g}": round(d, 3) for r, d in curve}
        rung = allowed(curve, cfg.tolerance)
        caps[name] = cfg.ladder[rung] if rung >= 0 else 0.0
        facts[name]["cap"] = caps[name]
    pinned_masks = uniform_masks(pruner.originals, pinned)
    max_drop = cfg.max_drop if cfg.max_drop is not None else DEFAULT_MAX_DROP

    def attempt(pooled: float) -> tuple[float, dict, dict]:
        masks = {**capped_global_masks(pruner.originals, caps, pooled), **pinned_masks}
        shifts = pruner.apply(masks)
        drop = 100.0 * (base - pruner.ctx.score(pruner.graph))
        pruner.ctx.progress(f"prune: pooled {pooled:.3f} joint drop {drop:+.2f} points")
        return drop, masks, shifts

    sizes = {n: pruner.originals[n].size for n in caps}
    full = sum(caps[n] * sizes[n] for n in caps) / max(sum(sizes.values()), 1)
    drop, masks, shifts = attempt(full)  # every layer at its cap
    pooled = full
    if drop > max_drop + EPS:
        pooled, (drop, masks, shifts) = bisect_budget(attempt, 0.0, full, max_drop)
    notes.append(
        f"sensitivity: base score {100 * base:.2f}%, joint drop {drop:.2f} points at pooled "
        f"sparsity {pooled:.3f} of the scanned layers (caps at {full:.3f}; tolerance "
        f"{cfg.tolerance:g} per layer, max_drop {max_drop:g})"
    )
    return masks, shifts


def bisect_budget(
    attempt: Callable[[float], tuple[float, dict, dict]],
    lo: float,
    hi: float,
    max_drop: float,
    steps: int = 6,
) -> tuple[float, tuple[float, dict, dict]]:
    """Largest x in [lo, hi] with attempt(x)'s drop <= max_drop (drop assumed to grow with
    x; hi is known to fail). The graph is left holding the returned attempt."""
    best, last = None, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        last = (mid, attempt(mid))
        if last[1][0] <= max_drop + EPS:
            best, lo = last, mid
        else:
            hi = mid
    if best is None:
        return 0.0, attempt(0.0)
    return best if best is last else (best[0], attempt(best[0]))


def global_search(
    pruner: _Pruner, cfg: Config, pinned: Mapping[str, float], notes: list[str]
) -> tuple[dict[str, np.ndarray], float, dict[str, np.ndarray]]:
    """One pooled threshold at `sparsity`; without it, the largest ladder ratio whose joint
    drop is within `max_drop` (bisection, assuming the drop grows with the ratio)."""
    pooled = cfg.sparsity if cfg.sparsity is not None else (cfg.per_layer or {}).get("*")
    if pooled is not None:
        masks, t = global_masks(pruner.originals, pinned, pooled)
        notes.append(f"global magnitude threshold {t:.6g}")
        return masks, t, pruner.apply(masks)
    if cfg.max_drop is None or pruner.ctx.score is None:
        raise BadInputError(
            "prune mode 'global' needs 'sparsity' (the pooled ratio), or "
            "'max_drop' and calibration data to search for it"
        )
    base = pruner.ctx.score(pruner.graph)

    def attempt(ratio: float) -> tuple[float, dict, dict]:
        masks, _ = global_masks(pruner.originals, pinned, ratio)
        shifts = pruner.apply(masks)
        drop = 100.0 * (base - pruner.ctx.score(pruner.graph))
        pruner.ctx.progress(f"prune: global {ratio:.3f} joint drop {drop:+.2f} points")
        return drop, masks, shifts

    ratio = cfg.ladder[-1]
    drop, masks, shifts = attempt(ratio)
    if drop > cfg.max_drop + EPS:
        ratio, (drop, masks, shifts) = bisect_budget(attempt, 0.0, ratio, cfg.max_drop)
    t = global_masks(pruner.originals, pinned, ratio)[1]
    notes.append(
        f"global: searched the pooled sparsity for max_drop {cfg.max_drop:g}: "
        f"{ratio:.3f} (threshold {t:.6g}, joint drop {drop:.2f}, base score "
        f"{100 * base:.2f}%)"
    )
    return masks, t, shifts
