"""Sensitivity curves: what each layer costs, compressed alone, at every setting of the ladders.

For each weight, the rest of the model untouched, the layer is pruned at each sparsity (with
the same compensation the prune pass applies, fitted on the fit half of the calibration data)
and, separately, clustered at each bit width (refit onto the codebook where the layer allows,
else bias correction: as the cluster pass does); each time the model's
scored output on the held-out half is compared with the uncompressed model's, in the metric's
smooth stand-in (metrics.distortion) and in the metric itself. A ladder stops at the first rung
whose own drop already exceeds twice the whole budget: a rung above cannot be chosen.

When running the model after every layer at every rung would cost more than FULL_CURVES_FLOPS
(a 25 M-parameter CNN at 224x224: about 250 TFLOPs, half an hour on two vCPUs), the rungs are
measured at the layer's own output instead (the squared change of what the layer computes,
on the same held-out samples: a run of that one layer), and one end-to-end run per layer, at
its rung of median output change, gives the factor that turns the layer's output change into
the scored output's distortion and drop. To first order a small change at a layer's output
reaches the scored output through the same Jacobian whatever caused it, so the factor carries
from that rung to the others; the trials measure what the approximation misses.

The curves also price every (sparsity, bits) pair of the layer in container bytes (space.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import onnx_graphsurgeon as gs

from ..calibration import GraphSession, Snapshot
from ..calibration.segments import capture, frontier, needed, run_batches, subgraph_session
from ..compensate import Compensator
from ..data import Dataset
from ..graph import Weight, downstream_nodes, iter_weights
from ..graph.cost import dims_of, graph_costs
from ..kernels.masks import apply_mask, magnitude_mask
from ..metrics import Metric, distortion, drop
from . import space

SIZE_SAMPLE = 1 << 19  # elements priced exactly; larger tensors are priced on a slice and scaled
# Held-out samples the curves are measured on (the trials use them all): as many as fit in
# CURVE_FLOPS of the whole model per evaluation (about a quarter of a second here), within
# MIN/MAX_CURVE_SAMPLES. The curves only rank settings in a smooth stand-in of the metric, so a
# large model needs fewer samples than its end-to-end trials.
MIN_CURVE_SAMPLES, MAX_CURVE_SAMPLES = 64, 256
CURVE_FLOPS = 16e9
# Beyond this, for every rung of every layer, the curves are measured at each layer's output
# with one end-to-end run per layer (module docstring): a few minutes of these two vCPUs.
FULL_CURVES_FLOPS = 1000 * CURVE_FLOPS
MIN_PROBE_SAMPLES = 16  # held-out samples of those end-to-end runs, at the least


@dataclass
class Curve:
    """One layer's costs alone: distortion and metric drop per rung, bytes per setting."""

    weight: str
    layer: str
    kind: str
    params: int
    prune: dict[float, tuple[float, float]] = field(default_factory=dict)  # s -> (dist, drop)
    cluster: dict[float | None, tuple[float, float]] = field(default_factory=dict)
    sizes: dict[space.Setting, int] = field(default_factory=dict)

    def settings(self) -> list[space.Setting]:
        """Every measured combination (a pruned and clustered layer counts both rungs)."""
        return [space.Setting(s, b) for s in self.prune for b in self.cluster]

    def distortion(self, setting: space.Setting) -> float:
        return self.prune[setting.sparsity][0] + self.cluster[setting.bits][0]

    def drop(self, setting: space.Setting) -> float:
        return self.prune[setting.sparsity][1] + self.cluster[setting.bits][1]


class _Downstream:
    """The scored output with one layer changed: only that layer and what follows it run, fed
    the frontier values the rest of the model had (captured once for every layer). Each
    layer's session is built when its curve starts and dropped when the next one does: the
    sessions of a deep model's every segment at once hold its weights many times over. With
    `alone`, also what the layer itself computes (a session of the layer and its bias Add)."""

    def __init__(self, graph: gs.Graph, weights: list[Weight], slots: dict, output: str,
                 data: Dataset, threads: int | None, alone: bool = False,
                 progress: Callable[[str], None] = lambda m: None):
        self.graph, self.output, self.threads = graph, output, threads
        self.plans: dict[str, tuple] = {}  # weight -> (nodes, inputs, variable) to the output
        self.own: dict[str, tuple] = {}  # the same for the layer alone (and its bias Add)
        for w in weights:
            slot = slots.get(w.tensor.name)
            variable = [w.tensor.name] + ([slot.tensor.name] if slot is not None else [])
            after = downstream_nodes(w.node) | {w.node.name}
            nodes = [n for n in needed(graph, [output], set()) if n.name in after]
            self.plans[w.tensor.name] = (nodes, frontier(nodes), variable)
            if alone:
                own = [w.node] + ([slot.add] if slot is not None and slot.add is not None
                                  else [])
                self.own[w.tensor.name] = (own, frontier(own), variable)
        names = {n for plan in (*self.plans.values(), *self.own.values()) for n in plan[1]}
        progress("search: capturing the activations every layer's curve starts from")
        self.first = next(data.batches())
        self.state = capture(graph, sorted(names), data, threads)
        self.sample = {**self.first, **self.state[0]}
        # the current layer's name and sessions (to the output; of the layer alone, when asked)
        self.current: tuple[str, GraphSession | None] | None = None
        self.current_alone: tuple[str, GraphSession] | None = None

    def __call__(self, w: Weight) -> np.ndarray | None:
        """The scored output; None when the layer does not reach it."""
        name = w.tensor.name
        if self.current is None or self.current[0] != name:
            self.current = None  # the previous layer's session goes before the next is built
            nodes, inputs, variable = self.plans[name]
            self.current = (name, subgraph_session(
                self.graph, nodes, inputs, [self.output], self.sample, variable,
                self.threads) if nodes else None)
        sess = self.current[1]
        if sess is None:
            return None
        return np.concatenate([b[self.output] for b in run_batches(sess, self.state)])

    def layer_output(self, w: Weight) -> np.ndarray:
        """What the layer itself computes (after its bias)."""
        name = w.tensor.name
        if self.current_alone is None or self.current_alone[0] != name:
            self.current_alone = None
            own, inputs, variable = self.own[name]
            self.current_alone = (name, subgraph_session(
                self.graph, own, inputs, [own[-1].outputs[0].name], self.sample, variable,
                self.threads))
        sess = self.current_alone[1]
        out = sess.graph.outputs[0].name
        return np.concatenate([b[out] for b in run_batches(sess, self.state)])


def measure(graph: gs.Graph, reference: Snapshot, fit: Dataset, held: Dataset, output: str,
            metric: Metric, budget: float, *, prune: bool = True, cluster: bool = True,
            threads: int | None = 1, progress: Callable[[str], None] = lambda m: None
            ) -> list[Curve]:
    """The curves of every weight of `graph` (see the module docstring); `graph` is left as
    it was (the work happens on a copy)."""
    work = graph.copy()
    weights = iter_weights(work)
    progress("search: collecting calibration statistics")
    comp = Compensator(work, weights, reference, fit, refit=True)
    total = sum(w.values.size for w in weights)
    ladders = {w.tensor.name: (space.SPARSITIES[1:] if prune else (),
                               space.bit_ladder(w.values.size, total)[1:] if cluster else ())
               for w in weights}
    samples, local = plan_samples(work, weights, ladders, held)
    held = held.head(min(len(held), samples))
    want = reference.outputs(held, output)
    run = _Downstream(work, weights, comp.slots, output, held, threads, local, progress)
    if local:
        progress(f"search: every rung measured at its layer's output, one run to the model's "
                 f"output per layer ({samples} samples): the whole model after every rung "
                 "would take too long")

    def cost(w: Weight) -> tuple[float, float]:
        got = run(w)
        if got is None:
            return 0.0, 0.0
        return distortion(metric, got, want), drop(metric, got, want, held.labels, held.targets)

    # pricing is mostly single-threaded numpy while the curves' runs leave a core idle: one
    # layer is priced while the next ones are measured
    with ThreadPoolExecutor(max_workers=1) as pricer:
        priced = [(curve, pricer.submit(_prices, w, comp.originals[w.tensor.name], curve))
                  for w, curve in _layer_curves(weights, ladders, comp, run, cost, local,
                                                budget, progress)]
        for curve, sizes in priced:
            curve.sizes = sizes.result()
    return [curve for curve, _ in priced]


def _layer_curves(weights: list[Weight], ladders: dict[str, tuple], comp: Compensator,
                  run: _Downstream, cost: Callable[[Weight], tuple[float, float]], local: bool,
                  budget: float, progress: Callable[[str], None]) -> Iterator[tuple[Weight, Curve]]:
    """Each layer's measured curve (without its prices), one after the other."""
    for i, w in enumerate(weights):
        original = comp.originals[w.tensor.name]
        curve = Curve(w.tensor.name, w.layer, w.kind, int(original.size))
        curve.prune[0.0] = curve.cluster[None] = (0.0, 0.0)
        where = f"search: {i + 1}/{len(weights)} {w.layer}"
        sparsities, bits = ladders[w.tensor.name]
        rungs = [(curve.prune, sparsities, partial(_pruned, w, original, comp), where + " s={:g}"),
                 (curve.cluster, bits, partial(_shared, w, original, comp), where + " {:g} bits")]
        if local:
            _local(rungs, w, comp, run, partial(cost, w), partial(_say, progress))
        else:
            for ladder, steps, apply, label in rungs:
                _climb(ladder, steps, apply, partial(cost, w), budget,
                       partial(_say, progress, label))
                comp.restore(w)
        yield w, curve


def _local(rungs: list[tuple], w: Weight, comp: Compensator, run: _Downstream,
           cost: Callable[[], tuple[float, float]], say: Callable[[str, float, float], None]
           ) -> None:
    """One layer's curves measured at its own output, each ladder scaled by one end-to-end
    run at its rung of median change (module docstring)."""
    before = run.layer_output(w).astype(np.float64)

    def change() -> tuple[float, float]:
        return float(np.mean(np.square(run.layer_output(w) - before))), 0.0

    for ladder, steps, apply, label in rungs:
        _climb(ladder, steps, apply, change, math.inf, lambda rung, d: None)
        changed = sorted((v[0], rung) for rung, v in ladder.items() if v[0] > 0)
        if changed:
            own, rung = changed[len(changed) // 2]
            apply(rung)
            dist, lost = cost()
            say(label + " (end to end)", rung, lost)
            for r, (e, _) in ladder.items():
                ladder[r] = (dist * e / own, lost * e / own)
        comp.restore(w)


def _climb(ladder: dict, rungs, apply: Callable[[float], None],
           cost: Callable[[], tuple[float, float]], budget: float,
           say: Callable[[float, float], None]) -> None:
    """Measure each rung in turn; stop at the first whose drop alone is twice the budget: a
    rung above it cannot be chosen."""
    for rung in rungs:
        apply(rung)
        ladder[rung] = cost()
        say(rung, ladder[rung][1])
        if ladder[rung][1] > 2 * budget:
            break


def _say(progress: Callable[[str], None], label: str, rung: float, drop: float) -> None:
    progress(f"{label.format(rung)} drop {drop:+.2f}")


def _pruned(w: Weight, original: np.ndarray, comp: Compensator, sparsity: float) -> None:
    """The layer magnitude-pruned, with the prune pass's compensation (its quick estimate)."""
    keep = magnitude_mask(original, sparsity)
    w.set_values(apply_mask(original, keep))
    comp.alone(w, keep, quick=True)


def _shared(w: Weight, original: np.ndarray, comp: Compensator, bits: float) -> None:
    """The layer shared at `bits`, as the cluster pass: onto the codebook, refit."""
    values, book = space.clustered(original, bits, w.kind)
    w.set_values(values)
    comp.alone(w, codebook=book)


def plan_samples(graph: gs.Graph, weights: list[Weight], ladders: dict[str, tuple],
                 data: Dataset) -> tuple[int, bool]:
    """How many held-out samples the curves measure on (CURVE_FLOPS), and whether they are
    measured at each layer's output (FULL_CURVES_FLOPS; then the end-to-end runs get fewer
    samples, MIN_PROBE_SAMPLES at the least)."""
    first = next(data.head(1).batches())
    flops = {c.name: c.flops for c in graph_costs(graph, dims_of(graph, first))}
    per_sample = sum(flops.values())
    fit = int(CURVE_FLOPS / per_sample) if per_sample > 0 else MAX_CURVE_SAMPLES
    samples = max(MIN_CURVE_SAMPLES, min(MAX_CURVE_SAMPLES, fit))
    after = {w.tensor.name: sum(flops.get(n, 0.0) for n in downstream_nodes(w.node) | {w.node.name})
             for w in weights}
    per_rung = sum(after[name] * (len(s) + len(b)) for name, (s, b) in ladders.items())
    if per_rung * samples <= FULL_CURVES_FLOPS:
        return samples, False
    return max(MIN_PROBE_SAMPLES, min(samples, int(FULL_CURVES_FLOPS / per_rung))), True


def _prices(w: Weight, original: np.ndarray, curve: Curve) -> dict[space.Setting, int]:
    """Container bytes of every measured setting (a sample of rows for very large tensors)."""
    sample, scale = original, 1.0
    if original.size > SIZE_SAMPLE:  # rows spread over the whole tensor: the first rows of
        # an embedding table are often special tokens, unlike the rest
        rows = max(1, SIZE_SAMPLE // max(1, original.size // original.shape[0]))
        picked = np.random.default_rng(0).choice(original.shape[0], rows, replace=False)
        sample = original[np.sort(picked)]
        scale = original.size / sample.size
    pruned = {s: space.prune(sample, s) for s in curve.prune}
    return {st: math.ceil(space.pruned_bytes(pruned[st.sparsity], st.sparsity, st.bits, w.kind)
                          * scale) for st in curve.settings()}
