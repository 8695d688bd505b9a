"""The budget search behind `compress`: the smallest model whose measured drop fits the budget.

1. Curves (curves.py): each layer alone, at every rung of the sparsity and bit ladders, on the
   held-out half of the calibration data (compensation fitted on the other half).
2. Allocation (allocate.py): for each total distortion, the per-layer settings of fewest bytes.
3. Trials: the allocations are applied end to end by the prune and cluster passes themselves
   (fitted on the fit half only, as the final model will be) and the real metric is measured on
   the held-out half; a bisection along the frontier finds the most compressed allocation whose
   drop, plus one standard error of that measurement (at least a tenth of the budget), stays
   within the budget; it starts where the layers' drops alone add up to the budget and steps
   away from there. Layers left
   untouched are reported with the reason.

The result is a recipe (prune + cluster steps with per-layer tables), fitted on the same half
as the trials, and the chosen trial's own run (`Plan.outcome`: the graph after each step and
the step's report), which `compress` writes instead of running the recipe again: the model
written is the one measured. The curves reach the JSON report.
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
from ..passes.base import Context, PassReport
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
    # the chosen trial's run: each step, its report and the graph after it (None: not kept)
    outcome: list[tuple[Step, PassReport, gs.Graph]] | None = None

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
    trials: dict[int, Trial] = {}
    # the runs of fitting trials that may still be chosen: the chosen one is the fitting trial
    # of fewest predicted bytes (the frontier and the path between neighbours both run from
    # the most compressed allocation to the least)
    runs: dict[int, list[tuple[Step, PassReport, gs.Graph]]] = {}

    def trial(i: int) -> Trial:
        if i in trials:
            return trials[i]
        alloc = allocations[i]
        size = predicted(curves, alloc)[0]
        if all(s.untouched for s in alloc.values()):
            trials[i] = Trial(i, 0.0, 0.0, size, True)
            return trials[i]
        g = _copy(graph)
        stages: list[tuple[Step, PassReport, gs.Graph]] = []
        step_progress = lambda m: progress(f"search: trial {len(trials) + 1}: {m}")
        run(g, steps_for(alloc), Context(fit_cal, step_progress),
            lambda step, report: stages.append((step, report, _copy(g))))
        got = GraphSession(g, [calibration.output], threads=calibration.threads).collect(held)[
            calibration.output]
        d = M.drop(calibration.metric, got, want, held.labels, held.targets)
        se = M.standard_error(calibration.metric, got, want, held.labels)
        trials[i] = Trial(i, d, se, size, d + margin(se, budget) <= budget)
        if trials[i].fits:
            for k in [k for k in runs if trials[k].predicted_bytes > size]:
                del runs[k]
            runs[i] = stages
        progress(f"search: trial {len(trials)}: {size:,} B of weights, drop {d:+.2f} ± "
                 f"{se:.2f} ({'fits' if trials[i].fits else 'over'} the budget {budget:g})")
        return trials[i]

    order = list(range(len(allocations)))
    best = order[_boundary(order, trial, allocations, curves, budget)]
    if best > 0:  # between the two neighbours: switch layers one by one, best value first
        path = _path(curves, allocations[best], allocations[best - 1])
        order = [len(allocations) + i for i in reversed(range(len(path)))] + [best]
        allocations += path
        best = order[_boundary(order, trial, allocations, curves, budget)]
    chosen = allocations[best]
    result = trials[best]
    spared = _spared(curves, chosen, budget)
    failed = [t for t in trials.values() if not t.fits]
    if failed and all(s.untouched for s in chosen.values()):
        # the curves did not rule these layers out: the end-to-end trials did
        mildest = max(failed, key=lambda t: t.predicted_bytes)
        spared = {layer: ("every allocation that compressed the model measured over the budget "
                          f"end to end (the mildest, {mildest.predicted_bytes:,} B of weights: "
                          f"drop {mildest.drop:.2f} ± {mildest.error:.2f})") for layer in spared}
    return Plan(steps_for(chosen), chosen, budget, result.drop, result.error, len(held), fit_cal,
                curves, list(trials.values()), spared, runs.get(best))


def _copy(graph: gs.Graph) -> gs.Graph:
    """A copy that keeps what gs's copy drops: the producer's name and version."""
    out = graph.copy()
    out.producer_name, out.producer_version = graph.producer_name, graph.producer_version
    return out


def margin(error: float, budget: float) -> float:
    """What a trial's measured drop must leave free of the budget."""
    return max(MARGIN_SE * error, RESERVE * budget)


def _path(curves: list[Curve], fitting: Allocation, failing: Allocation) -> list[Allocation]:
    """Allocations from `fitting` towards `failing`, one layer switched at a time, the layers
    that save the most bytes per unit of distortion first; a layer passes through its settings
    in between (off the convex hull, so the frontier skipped them: where one layer holds much of
    the model, its hull steps are too coarse). `failing` itself is left out."""
    by_name = {c.weight: c for c in curves}

    def value(name: str) -> float:
        c, a, b = by_name[name], fitting[name], failing[name]
        saved = c.sizes[a] - c.sizes[b]
        cost = c.distortion(b) - c.distortion(a)
        return saved / cost if cost > 0 else float("inf")

    changed = sorted((n for n in fitting if fitting[n] != failing[n]), key=value, reverse=True)
    path, current = [], dict(fitting)
    for k, name in enumerate(changed):
        path += [{**current, name: s} for s in _between(by_name[name], fitting[name], failing[name])]
        current = {**current, name: failing[name]}
        if k < len(changed) - 1:
            path.append(current)
    return path


def _between(curve: Curve, a: Setting, b: Setting) -> list[Setting]:
    """Settings of a layer with fewer bytes than `a` and more than `b`, and distortion in
    between, from the most bytes down, each more distorting than the one before it."""
    inside = sorted((s for s in curve.settings() if curve.sizes[b] < curve.sizes[s] < curve.sizes[a]
                     and curve.distortion(a) <= curve.distortion(s) <= curve.distortion(b)),
                    key=lambda s: -curve.sizes[s])
    steps: list[Setting] = []
    for s in inside:
        if not steps or curve.distortion(s) >= curve.distortion(steps[-1]):
            steps.append(s)
    return steps


def _boundary(order: list[int], trial: Callable[[int], Trial], allocations: list[Allocation],
              curves: list[Curve], budget: float) -> int:
    """The first position in `order` (allocations from the most compressed on; the last always
    fits: it touches nothing, or only what costs nothing) whose trial fits the budget.

    Regula falsi: the drop of an allocation is taken as proportional to the distortion its
    layers add up to, the factor read off the latest trial (initially off the curves), and the
    next trial is the first allocation predicted to fit; a bisection step when two trials in a
    row did not halve the interval. A few trials when the prediction is good, at most about
    three per halving when not."""
    dist = [predicted(curves, allocations[i])[1] for i in order]
    lo, hi = 0, len(order) - 1  # invariant: hi fits, every position below lo does not
    if not trial(order[hi]).fits:
        return hi  # the least distorting allocation is all a search can give
    scale, error, stalls = _initial_scale(curves), 0.0, 0
    while lo < hi:
        if stalls < 2:
            room = (budget - margin(error, budget)) / scale
            pos = next((k for k in range(lo, hi) if dist[k] <= room), hi - 1)
        else:
            pos = (lo + hi) // 2
        width = hi - lo
        t = trial(order[pos])
        if t.fits:
            hi = pos
        else:
            lo = pos + 1
        stalls = 0 if hi - lo <= width // 2 else stalls + 1
        if dist[pos] > 0 and t.drop > 0:
            scale, error = t.drop / dist[pos], t.error
    return hi


def _initial_scale(curves: list[Curve]) -> float:
    """Metric drop per unit of distortion, over every layer's curve points."""
    points = [v for c in curves for ladder in (c.prune, c.cluster) for v in ladder.values()
              if v[0] > 0]
    total = sum(d for d, _ in points)
    gained = sum(max(m, 0.0) for _, m in points)
    return gained / total if total > 0 and gained > 0 else 1.0


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

