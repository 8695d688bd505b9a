"""Which setting each layer gets: the smallest container for a given total distortion.

Multiple-choice knapsack by Lagrangian relaxation (the rate-distortion allocation of Shoham &
Gersho 1988, used for mixed-precision compression since): with per-layer costs assumed to add
up, for a multiplier lam each layer independently takes

    argmin over its settings of  bytes(setting) + lam * distortion(setting),

and sweeping lam from 0 (smallest bytes) to infinity (no distortion) walks the lower convex hull
of every layer's (distortion, bytes) points. `frontier` returns the distinct allocations met on
the way, from the most compressed to the least; the search then measures the real drop of a few
of them end to end, because distortions of layers do not quite add up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .curves import Curve
from .space import Setting

Allocation = dict[str, Setting]  # weight name -> setting


def _choice(curve: Curve, lam: float) -> Setting:
    options = curve.settings()
    costs = [curve.sizes[s] + lam * curve.distortion(s) for s in options]
    best = min(range(len(options)), key=lambda i: (costs[i], curve.distortion(options[i])))
    return options[best]


def _breakpoints(curve: Curve) -> list[float]:
    """The multipliers at which this layer's choice can change: slopes between its points."""
    pts = sorted({(curve.distortion(s), curve.sizes[s]) for s in curve.settings()})
    out = []
    for i, (d1, b1) in enumerate(pts):
        for d2, b2 in pts[i + 1 :]:
            if d2 > d1 and b1 > b2:
                out.append((b1 - b2) / (d2 - d1))
    return out


def frontier(curves: Sequence[Curve]) -> list[Allocation]:
    """Distinct allocations along the multiplier sweep, most compressed first."""
    lams = sorted({lam for c in curves for lam in _breakpoints(c)})
    probes = [0.0] + [np.nextafter(lam, np.inf) for lam in lams] + [np.inf]
    seen, out = set(), []
    for lam in probes:
        alloc = {c.weight: _choice(c, lam if np.isfinite(lam) else 1e300) for c in curves}
        key = tuple(sorted((k, v.sparsity, v.bits or 0) for k, v in alloc.items()))
        if key not in seen:
            seen.add(key)
            out.append(alloc)
    return out


def predicted(curves: Sequence[Curve], alloc: Allocation) -> tuple[int, float]:
    """(bytes, summed distortion) the curves predict for an allocation."""
    by_name = {c.weight: c for c in curves}
    size = sum(by_name[n].sizes[s] for n, s in alloc.items())
    dist = sum(by_name[n].distortion(s) for n, s in alloc.items())
    return size, dist
