"""The budget search behind `compress`: the smallest model whose measured drop fits the budget.

1. Curves (curves.py): each layer alone, at every rung of the sparsity and bit ladders, on the
   held-out half of the calibration data (compensation fitted on the other half).
2. Allocation (allocate.py): for each total distortion, the per-layer settings of fewest bytes.
3. Trials: the allocations are applied end to end by the prune and cluster passes themselves
   (fitted on the fit half only, as the final model will be) and the real metric is measured on
   the held-out half; a bisection along the frontier finds the most compressed allocation whose
   drop, plus one standard error of that measurement (at least a tenth of the budget), stays
   within the budget. Layers left
   untouched are reported with the reason.

The result is a recipe (prune + cluster steps with per-layer tables) that `compress` runs
through the ordinary pipeline, fitted on the same half, so the model written is the one
measured. The curves reach the JSON report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx_graphsurgeon as gs

from .. import metrics as M
from ..calibration import Calibration, GraphSession
from ..passes import cluster as cluster_pass
from ..passes import prune as prune_pass
from ..passes.base import Context
from ..pipeline import Step, run
from .allocate import Allocation, frontier, predicted
from .curves import Curve, measure
from .space import Setting

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 0.5  # in the metric's units, when the user gives none
MARGIN_SE = 1.0  # standard errors of the held-out measurement kept free of the budget
# A held-out measurement can be precise (a standard error of 2% of the budget) and still miss
# how other inputs of the same kind fare: a tenth of the budget is always kept free.
RESERVE = 0.1


@dataclass
class Trial:
    index: int  # position on the frontier (0: most compressed)
    drop: float
    error: float
    predicted_bytes: int
    fits: bool


@dataclass
class Plan:
    steps: list[Step]
    allocation: Allocation
    budget: float
    drop: float  # measured on the held-out calibration samples
    error: float  # its standard error
    held_out: int  # samples it was measured on
    fit: Calibration  # the calibration the steps must be fitted on
    curves: list[Curve] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    spared: dict[str, str] = field(default_factory=dict)  # layer -> why it is untouched

    def notes(self) -> list[str]:
        used = 100 * max(self.drop, 0.0) / self.budget if self.budget > 0 else 0.0
        out = [(f"budget search: drop {self.drop:.2f} ± {self.error:.2f} on {self.held_out} "
               f"held-out calibration samples, {used:.0f}% of the budget {self.budget:g} "
               f"({len(self.trials)} trials of the {len(self.curves)} layers' allocations)")]
        out += [f"spared {layer}: {why}" for layer, why in self.spared.items()]
        return out

    def facts(self) -> dict[str, Any]:
        """The measurement, the trials, and each layer's curves and choice, for the JSON
        report."""
        return {
            "budget": self.budget, "drop": self.drop, "error": self.error,
            "held_out": self.held_out,
            "trials": [{"bytes": t.predicted_bytes, "drop": t.drop, "error": t.error,
                        "fits": t.fits} for t in self.trials],
            "spared": self.spared,
            "layers": self._layer_facts()}

    def _layer_facts(self) -> dict[str, Any]:
        return {
            c.layer: {"weight": c.weight, "kind": c.kind, "params": c.params,
                      "chosen": str(self.allocation[c.weight]),
                      "prune_curve": {f"{s:g}": [round(v, 4) for v in dv]
                                      for s, dv in c.prune.items()},
                      "cluster_curve": {"float" if b is None else f"{b:g}":
                                        [round(v, 4) for v in dv]
                                        for b, dv in c.cluster.items()}}
            for c in self.curves}


def plan(graph: gs.Graph, calibration: Calibration, budget: float | None, *,
         prune: bool = True, cluster: bool = True,
         progress: Callable[[str], None] = lambda m: None) -> Plan:
    """The most compressed prune/cluster recipe within `budget` (see the module docstring)."""
    budget = DEFAULT_BUDGET if budget is None else budget
    if calibration.can_split():
        fit, held = calibration.split()
    else:  # too few samples to hold any out: the measurement flatters the refit
        fit = held = calibration.data
    reference = calibration.snapshot(graph)
    curves = measure(graph, reference, fit, held, calibration.output, calibration.metric,
                     budget, prune=prune, cluster=cluster, threads=calibration.threads,
                     progress=progress)
    allocations = frontier(curves)
    fit_cal = calibration.on(fit)  # the trials and the final run share their k-means
    want = reference.outputs(held, calibration.output)
    trials: list[Trial] = []

    def fits(i: int) -> bool:
        done = next((t for t in trials if t.index == i), None)
        if done is not None:
            return done.fits
        alloc = allocations[i]
        if all(s.untouched for s in alloc.values()):
            trials.append(Trial(i, 0.0, 0.0, predicted(curves, alloc)[0], True))
            return True
        g = graph.copy()
        run(g, steps_for(alloc), Context(fit_cal))
        got = GraphSession(g, [calibration.output]).collect(held)[calibration.output]
        d = M.drop(calibration.metric, got, want, held.labels, held.targets)
        se = M.standard_error(calibration.metric, got, want, held.labels)
        ok = d + margin(se, budget) <= budget
        trials.append(Trial(i, d, se, predicted(curves, alloc)[0], ok))
        progress(f"search: trial {len(trials)}: {predicted(curves, alloc)[0]:,} B of weights, "
                 f"drop {d:+.2f} ± {se:.2f} ({'fits' if ok else 'over'} the budget {budget:g})")
        return ok

    best = _first_fitting(len(allocations), fits)
    if best > 0:  # between the two neighbours: switch layers one by one, best value first
        path = _path(curves, allocations[best], allocations[best - 1])
        order = [len(allocations) + i for i in reversed(range(len(path)))] + [best]
        allocations += path
        best = order[_first_fitting(len(order), lambda k: fits(order[k]))]
    chosen = allocations[best]
    result = next(t for t in trials if t.index == best)
    return Plan(steps_for(chosen), chosen, budget, result.drop, result.error, len(held), fit_cal,
                curves, trials, _spared(curves, chosen, budget))


def margin(error: float, budget: float) -> float:
    """What a trial's measured drop must leave free of the budget."""
    return max(MARGIN_SE * error, RESERVE * budget)


def _path(curves: list[Curve], fitting: Allocation, failing: Allocation) -> list[Allocation]:
    """Allocations from `fitting` towards `failing`, one layer switched at a time, the layers
    that save the most bytes per unit of distortion first; the last one is `failing`."""
    by_name = {c.weight: c for c in curves}

    def value(name: str) -> float:
        c, a, b = by_name[name], fitting[name], failing[name]
        saved = c.sizes[a] - c.sizes[b]
        cost = c.distortion(b) - c.distortion(a)
        return saved / cost if cost > 0 else float("inf")

    changed = sorted((n for n in fitting if fitting[n] != failing[n]), key=value, reverse=True)
    path, current = [], dict(fitting)
    for name in changed[:-1]:
        current = {**current, name: failing[name]}
        path.append(current)
    return path


def _first_fitting(n: int, fits: Callable[[int], bool]) -> int:
    """The smallest index whose allocation fits, by bisection (the last one always does:
    it touches nothing, or only what costs nothing)."""
    lo, hi = 0, n - 1  # invariant: hi fits
    if not fits(hi):
        return hi  # the least distorting allocation is all a search can give
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def steps_for(alloc: Allocation) -> list[Step]:
    """The prune and cluster steps that apply an allocation (layers keyed by weight name)."""
    ratios = {name: s.sparsity for name, s in alloc.items() if s.sparsity > 0}
    bits = {name: s.bits for name, s in alloc.items() if s.bits is not None}
    float_layers = tuple(name for name, s in alloc.items() if s.bits is None)
    steps = []
    if ratios:
        steps.append(Step("prune", prune_pass.Config(per_layer=ratios)))
    if bits:
        steps.append(Step("cluster", cluster_pass.Config(per_layer=bits, exclude=float_layers)))
    return steps


def _spared(curves: list[Curve], alloc: Allocation, budget: float) -> dict[str, str]:
    out = {}
    for c in curves:
        if not alloc[c.weight].untouched:
            continue
        mildest = [dv[1] for s, dv in c.prune.items() if s > 0][:1] + \
                  [dv[1] for b, dv in c.cluster.items() if b is not None][:1]
        if mildest and min(mildest) > budget:
            out[c.layer] = (f"alone, its mildest setting already costs {min(mildest):.2f} "
                            f"(budget {budget:g})")
        else:
            saved = c.sizes[Setting(0.0, None)] - min(c.sizes.values())
            out[c.layer] = (f"compressing it would save at most {saved:,} B, not worth its "
                            "share of the budget")
    return out


__all__ = ["DEFAULT_BUDGET", "Plan", "plan", "steps_for"]

