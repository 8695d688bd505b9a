"""Compensation: what the prune and cluster passes call after changing weights.

`Compensator` bundles the least-squares refit (refit.py) and bias correction (bias.py). Built
BEFORE the weights change, it records the original weights, gives each layer a bias slot and
takes its statistics from a calibration snapshot of the graph as it was (the reference). Then
`alone` compensates one perturbed layer analytically (upstream unchanged: used by sensitivity
scans) and `sweep` compensates a set of perturbed layers sequentially in topological order.
With `refit`, layers that support it get the refit of their kept weights and bias; others (and
all layers without `refit`) get bias correction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ..calibration.service import Snapshot
from ..data import Dataset
from ..graph import Weight
from .bias import (
    BiasSlot,
    Corrected,
    bias_slot,
    correct_biases,
    drop_if_unused,
    input_stats,
    layer_input,
    output_mean,
)
from .refit import Alone, Refit, layer_grams, refit_sweep, refit_unsupported

__all__ = ["Compensator"]


class Compensator:
    """Undo the damage of perturbing layer weights, from calibration data (module docstring)."""

    def __init__(
        self,
        graph: gs.Graph,
        weights: Sequence[Weight],
        snapshot: Snapshot,
        data: Dataset,
        *,
        refit: bool,
        damp: float = 0.01,
        notes: list[str] | None = None,
        originals: Mapping[str, np.ndarray] | None = None,
        progress: Callable[[str], None] = lambda m: None,
    ):
        self.graph, self.snapshot, self.data = graph, snapshot, data
        self.damp, self.progress = damp, progress
        self.weights = list(weights)
        self.originals = dict(originals or {w.tensor.name: w.values.copy() for w in self.weights})
        self.slots: dict[str, BiasSlot] = {}
        notes = notes if notes is not None else []
        for w in self.weights:
            slot = bias_slot(graph, w)
            if isinstance(slot, str):
                notes.append(f"no bias correction: {slot}")
            else:
                self.slots[w.tensor.name] = slot
        self.bias_before = {k: np.asarray(s.tensor.values).copy() for k, s in self.slots.items()}
        with_slot = [w for w in self.weights if w.tensor.name in self.slots]
        self.refittable = {w.tensor.name for w in with_slot if refit and not refit_unsupported(w)}
        self._stats: dict[str, np.ndarray] = {}
        self._grams: dict[str, np.ndarray] | None = None
        self._alone: dict[str, Alone] = {}  # per layer: what its refits alone share

    def stat(self, *layers: Weight) -> list[np.ndarray]:
        """The input statistic of each layer (for bias correction), from the snapshot; only
        asked for when needed: a sweep that refits every layer uses none."""
        todo = [w for w in layers if w.tensor.name not in self._stats]
        if todo:
            self.progress("collecting layer input statistics")
            means = self.snapshot.means(self.data, [layer_input(w).name for w in todo])
            self._stats.update(input_stats(means, todo))
        return [self._stats[w.tensor.name] for w in layers]

    def method(self, w: Weight) -> str:
        """'refit', 'bias' or 'none' for this layer."""
        name = w.tensor.name
        return "refit" if name in self.refittable else "bias" if name in self.slots else "none"

    def restore(self, w: Weight) -> None:
        """Original weight and bias of one layer."""
        w.set_values(self.originals[w.tensor.name])
        if w.tensor.name in self.slots:
            self.slots[w.tensor.name].tensor.values = self.bias_before[w.tensor.name].copy()

    def alone(self, w: Weight, keep: np.ndarray | None = None,
              codebook: np.ndarray | None = None, quick: bool = False) -> None:
        """Compensate one layer whose weights were changed in place (upstream unchanged): a
        pruned layer (`keep`) or a clustered one (`codebook`: its weights stay its values) is
        refit where the layer allows, else its bias is corrected; `quick` estimates the refit
        of a pruned layer (for searches)."""
        name, method = w.tensor.name, self.method(w)
        if method == "none":
            return
        slot = self.slots[name]
        slot.tensor.values = self.bias_before[name].copy()
        if method == "refit" and (keep is not None or codebook is not None):
            if self._grams is None:
                refittable = [x for x in self.weights if x.tensor.name in self.refittable]
                self._grams = layer_grams(self.snapshot, refittable, self.data)
            keep = keep if keep is not None else w.values != 0
            if name not in self._alone:
                self._alone[name] = Alone(w, slot, self._grams[name], self.originals[name],
                                          self.bias_before[name], self.damp)
            self._alone[name].fit(keep, codebook, quick)
        else:
            stat, = self.stat(w)
            slot.shift(output_mean(w, self.originals[name], stat) - output_mean(w, w.values, stat))

    def sweep(self, changed: Sequence[Weight], keeps: Mapping[str, np.ndarray] | None = None,
              codebooks: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Compensate the changed layers in order (pruned ones by their `keeps`, clustered
        ones onto their `codebooks`); returns weight name -> output bias change."""
        for w in changed:
            if w.tensor.name in self.slots:
                self.slots[w.tensor.name].tensor.values = self.bias_before[w.tensor.name].copy()
        todo = [w for w in changed if self.method(w) != "none"]
        if codebooks is not None:  # zeros stay zeros: the kept set is what is nonzero now
            keeps = {**{w.tensor.name: w.values != 0 for w in changed}, **(keeps or {})}
        if keeps is None or not any(self.method(w) == "refit" for w in todo):
            layers = [Corrected(w, self.slots[w.tensor.name], self.originals[w.tensor.name],
                                stat) for w, stat in zip(todo, self.stat(*todo))]
            return correct_biases(self.graph, layers, self.data, self.snapshot.threads,
                                  progress=self.progress)
        kept = {w.tensor.name: keeps.get(w.tensor.name) if self.method(w) == "refit" else None
                for w in todo}
        corrected = [w for w in todo if kept[w.tensor.name] is None]
        stats = dict(zip((w.tensor.name for w in corrected), self.stat(*corrected)))
        items = [
            Refit(w, self.slots[w.tensor.name], self.originals[w.tensor.name],
                  self.bias_before[w.tensor.name], kept[w.tensor.name],
                  stats.get(w.tensor.name), (codebooks or {}).get(w.tensor.name))
            for w in todo
        ]
        return refit_sweep(self.graph, items, self.snapshot, self.data, self.damp,
                           self.snapshot.threads, progress=self.progress)

    def finish(self) -> None:
        """Remove the biases this object created that stayed zero."""
        for w in self.weights:
            slot = self.slots.get(w.tensor.name)
            if slot is not None and drop_if_unused(self.graph, w, slot):
                del self.slots[w.tensor.name]
