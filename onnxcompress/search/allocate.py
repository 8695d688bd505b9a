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

import itertools
from collections.abc import Sequence

import numpy as np

from .curves import Curve
from .space import Setting

Allocation = dict[str, Setting]  # weight name -> setting


class _Options:
    """One layer's settings as arrays: bytes and distortion of each."""

    def __init__(self, curve: Curve):
        self.settings = curve.settings()
        self.bytes = np.array([curve.sizes[s] for s in self.settings], dtype=np.float64)
        self.dist = np.array([curve.distortion(s) for s in self.settings])

    def choice(self, lam: float) -> Setting:
        """The cheapest at this multiplier (ties: the least distorting)."""
        cost = self.bytes + lam * self.dist if lam < np.inf else self.dist
        return self.settings[int(np.lexsort((self.dist, cost))[0])]


def _breakpoints(curve: Curve) -> list[float]:
    """The multipliers at which this layer's choice changes: the slopes of the lower convex
    hull of its (distortion, bytes) points."""
    pts = sorted({(curve.distortion(s), curve.sizes[s]) for s in curve.settings()})
    hull: list[tuple[float, float]] = []
    for d, b in pts:  # monotone chain, keeping points with fewer bytes as distortion grows
        if hull and b >= hull[-1][1]:
            continue
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], (d, b)) <= 0:
            hull.pop()
        hull.append((d, b))
    return [(b1 - b2) / (d2 - d1) for (d1, b1), (d2, b2) in itertools.pairwise(hull) if d2 > d1]


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def frontier(curves: Sequence[Curve]) -> list[Allocation]:
    """Distinct allocations along the multiplier sweep, most compressed first."""
    lams = sorted({lam for c in curves for lam in _breakpoints(c)})
    probes = [0.0] + [np.nextafter(lam, np.inf) for lam in lams] + [np.inf]
    options = {c.weight: _Options(c) for c in curves}
    seen, out = set(), []
    for lam in probes:
        alloc = {name: opt.choice(lam) for name, opt in options.items()}
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
