"""Refit and the Compensator: what the prune and cluster passes call after changing weights.

Refit (kernels/refit.py): for pruned layers, the kept weights and the bias are re-estimated by
ridge least squares so that the layer, fed its input in the compressed model, reproduces the
ORIGINAL layer's outputs on the original input. Only Gram matrices of the input rows (im2col
patches for a Conv) are accumulated, one calibration pass per layer.

`Compensator` bundles refit and bias correction (passes/calibrate.py) for a pass: built before
the weights change, it compensates one layer alone (sensitivity scans, from statistics of the
original network) or a set of layers sequentially (the final result).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Weight
from ..kernels.refit import im2col, masked_lstsq, with_ones
from .calibrate import (
    BiasSlot,
    Corrected,
    Probe,
    bias_slot,
    conv_pads,
    correct_biases,
    correction_unsupported,
    drop_if_unused,
    input_stats,
    layer_input,
    layer_stat,
    output_mean,
)

log = logging.getLogger(__name__)


MAX_REFIT_INPUTS = 4096  # fan-in above this makes the Gram too big: bias correction instead
ROWS_PER_BATCH = 16384  # input rows (samples x positions) used per calibration batch


def refit_unsupported(w: Weight) -> str:
    """Why the least-squares refit cannot handle this layer, or '' if it can."""
    reason = correction_unsupported(w)
    if reason:
        return reason
    if w.node.op == "Conv" and int(w.node.attrs.get("group", 1)) != 1:
        return f"Conv '{w.node.name}': refit handles group=1 only"
    fan_in = to_rows(w, w.values).shape[1]
    if fan_in > MAX_REFIT_INPUTS:
        return f"{w.node.op} '{w.node.name}': fan-in {fan_in} exceeds {MAX_REFIT_INPUTS} for refit"
    return ""


def to_rows(w: Weight, arr: np.ndarray) -> np.ndarray:
    """An array in the weight's layout as (out channels, fan-in) rows."""
    node = w.node
    if node.op == "Conv":
        return arr.reshape(arr.shape[0], -1)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return arr
    return arr.T


def from_rows(w: Weight, rows: np.ndarray) -> np.ndarray:
    """Inverse of `to_rows`."""
    node = w.node
    if node.op == "Conv":
        return rows.reshape(w.values.shape)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return rows
    return rows.T


def _gain(w: Weight) -> float:
    return float(w.node.attrs.get("alpha", 1.0)) if w.node.op == "Gemm" else 1.0


def input_rows(w: Weight, x: np.ndarray) -> np.ndarray:
    """The layer's input rows: im2col patches for a Conv, else the last axis."""
    node = w.node
    if node.op != "Conv":
        return x.reshape(-1, x.shape[-1])
    kernel = list(node.attrs.get("kernel_shape") or w.values.shape[2:])
    d = len(kernel)
    strides = list(node.attrs.get("strides") or [1] * d)
    dilations = list(node.attrs.get("dilations") or [1] * d)
    pads = conv_pads(node, x.shape[2:], kernel, strides, dilations)
    return im2col(x, kernel, strides, pads, dilations)


def _pick(n: int, seed: int) -> np.ndarray | slice:
    if n <= ROWS_PER_BATCH:
        return slice(None)
    return np.sort(np.random.default_rng(seed).choice(n, ROWS_PER_BATCH, replace=False))


def layer_grams(
    orig: Probe, weights: Sequence[Weight], feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Weight name -> Gram of its layer's input rows (ones column last), one pass over feeds."""
    grams: dict[str, np.ndarray] = {}
    for k, captured in enumerate(orig.batches(feeds)):
        for w in weights:
            rows = input_rows(w, captured[layer_input(w).name])
            x1 = with_ones(rows[_pick(len(rows), k)])
            grams[w.tensor.name] = grams.get(w.tensor.name, 0.0) + x1.T @ x1
    return grams


def refit_alone(
    w: Weight,
    slot: BiasSlot,
    gram: np.ndarray,
    before: np.ndarray,
    bias_before: np.ndarray,
    keep: np.ndarray,
    damp: float,
) -> None:
    """Refit one layer whose input is unchanged (targets = its own original outputs)."""
    rows = to_rows(w, before).astype(np.float64) * _gain(w)
    full = np.hstack([rows, (bias_before * slot.scale)[:, None]])
    _set_fit(w, slot, *masked_lstsq(gram, gram @ full.T, to_rows(w, keep), damp, prior=rows))


def _set_fit(w: Weight, slot: BiasSlot, rows: np.ndarray, bias: np.ndarray) -> None:
    w.set_values(from_rows(w, rows / _gain(w)))
    slot.tensor.values = (bias / slot.scale).astype(np.asarray(slot.tensor.values).dtype)


@dataclass
class Refit:
    """One layer of a refit sweep; `keep` None means bias correction only (mean statistic)."""

    weight: Weight
    slot: BiasSlot
    before: np.ndarray
    bias_before: np.ndarray
    keep: np.ndarray | None = None
    stat_before: np.ndarray | None = None


def refit_sweep(
    graph: gs.Graph,
    layers: Sequence[Refit],
    orig: Probe,
    feeds: Mapping[str, np.ndarray],
    damp: float = 0.01,
    threads: int | None = 1,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, np.ndarray]:
    """Refit (or bias-correct) each layer in topological order against the original outputs,
    on its input in the current compressed graph; returns weight name -> bias change."""
    changes = {}
    for i, c in enumerate(layers):
        progress(f"refit {i + 1}/{len(layers)} {c.weight.layer}")
        new = Probe(graph, [layer_input(c.weight).name], threads=threads)
        if c.keep is None:
            stat_now = layer_stat(c.weight, new.means(feeds)[layer_input(c.weight).name])
            c.slot.shift(
                output_mean(c.weight, c.before, c.stat_before)
                - output_mean(c.weight, c.weight.values, stat_now)
            )
        else:
            gram, cross = _normal_equations(c, new, orig, feeds)
            prior = to_rows(c.weight, c.before).astype(np.float64) * _gain(c.weight)
            fit = masked_lstsq(gram, cross, to_rows(c.weight, c.keep), damp, prior=prior)
            _set_fit(c.weight, c.slot, *fit)
        changes[c.weight.tensor.name] = (
            np.asarray(c.slot.tensor.values, dtype=np.float64) - c.bias_before
        ) * c.slot.scale
    return changes


def _normal_equations(
    c: Refit, new: Probe, orig: Probe, feeds: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Gram of the compressed input rows and their cross term with the original outputs."""
    name = layer_input(c.weight).name
    target = to_rows(c.weight, c.before).astype(np.float64) * _gain(c.weight)
    bias = c.bias_before.astype(np.float64) * c.slot.scale
    gram = cross = 0.0
    for k, (now, was) in enumerate(zip(new.batches(feeds), orig.batches(feeds))):
        rows_now = input_rows(c.weight, now[name])
        pick = _pick(len(rows_now), k)
        x1 = with_ones(rows_now[pick])
        y = input_rows(c.weight, was[name])[pick].astype(np.float64) @ target.T + bias
        gram = gram + x1.T @ x1
        cross = cross + x1.T @ y
    return gram, cross


# ----------------------------------------------------------------------------- compensator


class Compensator:
    """Undo the damage of perturbing layer weights, from calibration data.

    Built BEFORE the weights change: it records the original weights, gives each layer a
    bias slot and collects the statistics it needs. Then `alone` compensates one perturbed
    layer analytically (upstream unchanged: used by sensitivity scans) and `sweep` compensates
    a set of perturbed layers sequentially in topological order. With `refit`, layers that
    support it get the least-squares refit of their kept weights and bias; others (and all
    layers without `refit`) get bias correction.
    """

    def __init__(
        self,
        graph: gs.Graph,
        weights: Sequence[Weight],
        feeds: Mapping[str, np.ndarray],
        *,
        refit: bool,
        damp: float = 0.01,
        notes: list[str] | None = None,
        originals: Mapping[str, np.ndarray] | None = None,
        progress: Callable[[str], None] = lambda m: None,
    ):
        self.graph, self.feeds, self.damp, self.progress = graph, feeds, damp, progress
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
        progress("collecting layer input statistics")
        self.stats = input_stats(graph, with_slot, feeds)
        self.orig = (
            Probe(graph, [layer_input(w).name for w in with_slot]) if self.refittable else None
        )
        self._grams: dict[str, np.ndarray] | None = None

    def method(self, w: Weight) -> str:
        """'refit', 'bias' or 'none' for this layer."""
        name = w.tensor.name
        return "refit" if name in self.refittable else "bias" if name in self.slots else "none"

    def restore(self, w: Weight) -> None:
        """Original weight and bias of one layer."""
        w.set_values(self.originals[w.tensor.name])
        if w.tensor.name in self.slots:
            self.slots[w.tensor.name].tensor.values = self.bias_before[w.tensor.name].copy()

    def alone(self, w: Weight, keep: np.ndarray | None = None) -> None:
        """Compensate one layer whose weights were changed in place (upstream unchanged)."""
        name, method = w.tensor.name, self.method(w)
        if method == "none":
            return
        slot = self.slots[name]
        slot.tensor.values = self.bias_before[name].copy()
        if method == "refit" and keep is not None:
            if self._grams is None:
                self._grams = layer_grams(
                    self.orig,
                    [x for x in self.weights if x.tensor.name in self.refittable],
                    self.feeds,
                )
            refit_alone(
                w,
                slot,
                self._grams[name],
                self.originals[name],
                self.bias_before[name],
                keep,
                self.damp,
            )
        else:
            stat = self.stats[name]
            slot.shift(output_mean(w, self.originals[name], stat) - output_mean(w, w.values, stat))

    def sweep(
        self, changed: Sequence[Weight], keeps: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Compensate the changed layers in order; returns weight name -> output bias change."""
        for w in changed:
            if w.tensor.name in self.slots:
                self.slots[w.tensor.name].tensor.values = self.bias_before[w.tensor.name].copy()
        todo = [w for w in changed if self.method(w) != "none"]
        refit = keeps is not None and any(self.method(w) == "refit" for w in todo)
        if not refit:
            layers = [
                Corrected(
                    w,
                    self.slots[w.tensor.name],
                    self.originals[w.tensor.name],
                    self.stats[w.tensor.name],
                )
                for w in todo
            ]
            return correct_biases(self.graph, layers, self.feeds, progress=self.progress)
        items = [
            Refit(
                w,
                self.slots[w.tensor.name],
                self.originals[w.tensor.name],
                self.bias_before[w.tensor.name],
                keeps.get(w.tensor.name) if self.method(w) == "refit" else None,
                self.stats[w.tensor.name],
            )
            for w in todo
        ]
        return refit_sweep(
            self.graph, items, self.orig, self.feeds, self.damp, progress=self.progress
        )

    def finish(self) -> None:
        """Remove the biases this object created that stayed zero."""
        for w in self.weights:
            slot = self.slots.get(w.tensor.name)
            if slot is not None and drop_if_unused(self.graph, w, slot):
                del self.slots[w.tensor.name]
