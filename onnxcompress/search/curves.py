"""Sensitivity curves: what each layer costs, compressed alone, at every setting of the ladders.

For each weight, the rest of the model untouched, the layer is pruned at each sparsity (with
the same compensation the prune pass applies, fitted on the fit half of the calibration data)
and, separately, clustered at each bit width (refit onto the codebook where the layer allows,
else bias correction: as the cluster pass does); each time the model's
scored output on the held-out half is compared with the uncompressed model's, in the metric's
smooth stand-in (metrics.distortion) and in the metric itself. A ladder stops at the first rung
whose own drop already exceeds twice the whole budget: a rung above cannot be chosen.

The curves also price every (sparsity, bits) pair of the layer in container bytes (space.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    sessions of a deep model's every segment at once hold its weights many times over."""

    def __init__(self, graph: gs.Graph, weights: list[Weight], slots: dict, output: str,
                 data: Dataset, threads: int | None,
                 progress: Callable[[str], None] = lambda m: None):
        self.graph, self.output, self.threads = graph, output, threads
        self.plans = {}
        for w in weights:
            slot = slots.get(w.tensor.name)
            variable = [w.tensor.name] + ([slot.tensor.name] if slot is not None else [])
            after = downstream_nodes(w.node) | {w.node.name}
            nodes = [n for n in needed(graph, [output], set()) if n.name in after]
            self.plans[w.tensor.name] = (nodes, frontier(nodes), variable)
        names = {n for _, inputs, _ in self.plans.values() for n in inputs}
        progress("search: capturing the activations every layer's curve starts from")
        self.first = next(data.batches())
        self.state = capture(graph, sorted(names), data, threads)
        self.current: tuple[str, GraphSession | None] | None = None

    def __call__(self, w: Weight) -> np.ndarray | None:
        name = w.tensor.name
        if self.current is None or self.current[0] != name:
            self.current = None  # the previous layer's session goes before the next is built
            nodes, inputs, variable = self.plans[name]
            self.current = (name, subgraph_session(
                self.graph, nodes, inputs, [self.output], {**self.first, **self.state[0]},
                variable, self.threads) if nodes else None)
        sess = self.current[1]
        if sess is None:  # the layer does not reach the scored output
            return None
        return np.concatenate([b[self.output] for b in run_batches(sess, self.state)])


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
    held = held.head(min(len(held), curve_samples(work, held)))
    want = reference.outputs(held, output)
    run = _Downstream(work, weights, comp.slots, output, held, threads, progress)

    def cost(w: Weight) -> tuple[float, float]:
        got = run(w)
        if got is None:
            return 0.0, 0.0
        return distortion(metric, got, want), drop(metric, got, want, held.labels, held.targets)

    curves = []
    total = sum(w.values.size for w in weights)
    for i, w in enumerate(weights):
        original = comp.originals[w.tensor.name]
        curve = Curve(w.tensor.name, w.layer, w.kind, int(original.size))
        curve.prune[0.0] = curve.cluster[None] = (0.0, 0.0)
        where = f"search: {i + 1}/{len(weights)} {w.layer}"
        measure_w = partial(cost, w)
        _climb(curve.prune, space.SPARSITIES[1:] if prune else (),
               partial(_pruned, w, original, comp), measure_w, budget,
               partial(_say, progress, where + " s={:g}"))
        comp.restore(w)
        _climb(curve.cluster, space.bit_ladder(original.size, total)[1:] if cluster else (),
               partial(_shared, w, original, comp), measure_w, budget,
               partial(_say, progress, where + " {:g} bits"))
        comp.restore(w)
        curve.sizes = _prices(w, original, curve)
        curves.append(curve)
    return curves


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


def curve_samples(graph: gs.Graph, data: Dataset) -> int:
    """How many samples the curves measure on (see CURVE_FLOPS)."""
    first = next(data.head(1).batches())
    per_sample = sum(c.flops for c in graph_costs(graph, dims_of(graph, first)))
    fit = int(CURVE_FLOPS / per_sample) if per_sample > 0 else MAX_CURVE_SAMPLES
    return max(MIN_CURVE_SAMPLES, min(MAX_CURVE_SAMPLES, fit))


def _prices(w: Weight, original: np.ndarray, curve: Curve) -> dict[space.Setting, int]:
    """Container bytes of every measured setting (a sample of rows for very large tensors)."""
    sample, scale = original, 1.0
    if original.size > SIZE_SAMPLE:  # rows spread over the whole tensor: the first rows of
        # an embedding table are often special tokens, unlike the rest
        rows = max(1, SIZE_SAMPLE // max(1, original.size // original.shape[0]))
        picked = np.random.default_rng(0).choice(original.shape[0], rows, replace=False)
        sample = original[np.sort(picked)]
        scale = original.size / sample.size
    return {st: math.ceil(space.stored_bytes(sample, st.sparsity, st.bits, w.kind) * scale)
            for st in curve.settings()}
