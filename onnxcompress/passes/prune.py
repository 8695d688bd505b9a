"""Unstructured magnitude pruning, post-training (Han, Pool, Tran & Dally, NIPS 2015; Han, Mao &
Dally, "Deep Compression", ICLR 2016, section 2), with layer-wise compensation on calibration
data in place of retraining.

Method. For a weight tensor W of a Conv, Gemm or MatMul and a ratio s in [0, 1], keep the
largest magnitudes:

    W' = W * [|W| > t],   t = the k-th smallest |W|,  k = round(s * |W|)

(exactly k weights pruned; ties broken by position). Pruned entries are +0.0 exactly. Masks
always come from the ORIGINAL weights.

How s is chosen per layer (`mode`):

- ``uniform``: `per_layer` ratios (exact names, then fnmatch patterns in order, then ``'*'``),
  else `sparsity`, else 0 (Distiller's convention: a layer not listed is not pruned).
- ``global``: one magnitude threshold t over all selected weights pooled, so that the pooled
  sparsity is `sparsity`: W' = W * [|W| > t]. Plain global magnitude with no per-layer
  normalization, so layers with small weights (wide fully connected layers) lose the most,
  which is what Deep Compression's FC-heavy ratios look like. Layers named in `per_layer`
  keep their own ratio and stay out of the pool. Without `sparsity`, the largest `ladder`
  ratio whose joint drop is <= `max_drop` is searched by bisection.
- ``sensitivity`` (the default when calibration data and a score are available): prune each
  layer ALONE (compensated) at each ratio of `ladder`, ascending, stopping at the first drop
  of ctx.score over `tolerance` points; the largest ratio within tolerance is the layer's
  CAP. Then all layers are pruned jointly at their caps. If the joint drop exceeds `max_drop`
  (None: MIN_HOLDOUT = 100  # samples per half below which the calibration set is not split
DEFAULT_MAX_DROP = 0.5 points), the allocation backs off along one capped global
  threshold: ratio_l = min(frac_l(|W| <= t), cap_l), with the pooled sparsity bisected on the
  JOINT drop. So the scan protects fragile layers and the threshold decides between the rest,
  pruning the big, low-magnitude layers hardest; Deep Compression's pattern (FC pruned far
  harder than conv) comes out of it. (A per-weight-cost knapsack over the scan curves was
  tried first: top-1 on 1,000 images cannot see small per-layer damage, so "free" steps
  added up to large joint drops.)
- ``auto``: ``uniform`` if `sparsity` or `per_layer` is given; else ``sensitivity`` when a
  score is available; else ``uniform`` at FALLBACK_SPARSITY (0.5) with a warning note, because
  without data the only safe choice is a moderate one.

Compensation (`bias_correction`, on when calibration data is available; passes/calibrate.py),
layer by layer in topological order so later layers see corrected inputs:

- `refit` (default): least-squares re-estimate of each pruned layer's KEPT weights and its
  bias so that the layer reproduces the original layer's outputs (AdaPrune, Hubara et al.
  2021; OBC, Frantar & Alistarh 2022), ridge `damp` toward the original weights. The zeros
  stay where magnitude put them.
- otherwise, or for layers the refit cannot handle (grouped Conv, fan-in above 4096): bias
  correction (Nagel et al. 2019), restoring each output channel's mean. On its own it is
  weak or harmful at high sparsity (measured: LeNet-5, 80% uniform: 67% -> 27% top-1, while
  refit gives 91%), because the damage is in the signal, not the mean.

The sensitivity scan applies the same compensation one layer at a time (from statistics of
the original network), so it measures what the joint pass will do. A refit flatters a score
measured on the data it was fitted to, so with `holdout` the searches (sensitivity, global
with max_drop) fit on the even calibration samples and score the odd ones with their own
scorer (top-1 accuracy with labels, else agreement with the unpruned model); the chosen
masks are then refit on all samples.

The mask planning (uniform, global, sensitivity search) lives in passes/prune_plan.py.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import BadInputError
from ..graph import Scope, Weight, iter_weights
from ..kernels.masks import (
    apply_mask,
    check_ratio,
    sparsity_of,
)
from . import calibrate as C
from .base import Context, PassReport
from .compensate import Compensator
from .prune_plan import global_search, sensitivity_search, uniform_masks

log = logging.getLogger(__name__)

NAME = "prune"
FALLBACK_SPARSITY = 0.5
MIN_HOLDOUT = 100  # samples per half below which the calibration set is not split
DEFAULT_LADDER = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98)


class Mode(str, enum.Enum):
    AUTO = "auto"
    UNIFORM = "uniform"
    GLOBAL = "global"
    SENSITIVITY = "sensitivity"


@dataclass(frozen=True)
class Config:
    """Settings of the prune pass (see the module docstring for their meaning)."""

    mode: Mode = Mode.AUTO
    sparsity: float | None = None  # uniform: default ratio; global: pooled ratio
    per_layer: Mapping[str, float] | None = None  # layer name / fnmatch pattern / '*' -> ratio
    exclude: tuple[str, ...] = ()  # layers never pruned (names or patterns)
    protect_first_last: bool = False  # keep the first and last weight layers dense
    tolerance: float = 1.0  # sensitivity: max drop (points) of one layer pruned alone (its cap)
    max_drop: float | None = None  # max joint drop (points) for sensitivity (None: 0.5) / global
    ladder: tuple[float, ...] = DEFAULT_LADDER  # sensitivity: ratios tried per layer
    bias_correction: bool = True  # compensate on calibration data, when there is some
    refit: bool = True  # compensate by least-squares refit of kept weights + bias (else bias only)
    damp: float = 0.01  # refit ridge, relative to the mean input energy
    holdout: bool = True  # with refit, searches fit half the calibration set, score the rest

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "ladder", tuple(sorted(float(r) for r in self.ladder)))
        if self.sparsity is not None:
            check_ratio(self.sparsity)
        for key, ratio in (self.per_layer or {}).items():
            check_ratio(ratio, f"per_layer['{key}']")
        for r in self.ladder:
            check_ratio(r, "ladder entry")
        if not self.ladder:
            raise ValueError("ladder must hold at least one ratio")
        if self.damp <= 0:
            raise ValueError(f"damp must be > 0, got {self.damp}")
        if self.tolerance < 0 or (self.max_drop is not None and self.max_drop < 0):
            raise ValueError("tolerance and max_drop are points of accuracy and must be >= 0")
        if self.mode is Mode.SENSITIVITY and self.sparsity is not None:
            raise ValueError(
                "sparsity is not used in sensitivity mode (ratios come from the scan; "
                "use tolerance / max_drop, or mode 'uniform' or 'global')"
            )


CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(Config))


# ----------------------------------------------------------------------------- layer tables


def resolve_per_layer(
    weights: list[Weight], table: Mapping[str, Any] | None, what: str = "per_layer"
) -> dict[str, Any]:
    """Weight name -> value from a Distiller-style table; layers matched by nothing are absent.

    Lookup order per layer: exact layer or weight name, then the first fnmatch pattern in the
    table's order, then '*'. A key other than '*' that matches no layer is an error.
    """
    table = dict(table or {})
    names = {w.tensor.name: (w.layer, w.tensor.name) for w in weights}
    for key in table:
        if key != "*" and not any(fnmatch.fnmatchcase(n, key) for ns in names.values() for n in ns):
            layers = ", ".join(w.layer for w in weights) or "(none)"
            raise BadInputError(f"{what}: '{key}' matches no layer; layers are: {layers}")
    out = {}
    for tensor, ns in names.items():
        exact = [k for k in table if k in ns]
        pattern = [k for k in table if k != "*" and any(fnmatch.fnmatchcase(n, k) for n in ns)]
        key = (exact or pattern or (["*"] if "*" in table else [None]))[0]
        if key is not None:
            out[tensor] = table[key]
    return out


def _select(graph: gs.Graph, cfg: Config) -> tuple[list[Weight], set[str]]:
    """Selected weights and the names of the protected (first/last) ones."""
    all_weights = iter_weights(graph)
    if not all_weights:
        return [], set()
    weights = Scope(exclude=cfg.exclude).select(all_weights) if cfg.exclude else all_weights
    protected = set()
    if cfg.protect_first_last:
        protected = {all_weights[0].tensor.name, all_weights[-1].tensor.name}
    return weights, protected


def _resolve_mode(cfg: Config, ctx: Context, notes: list[str]) -> Mode:
    if cfg.mode is Mode.SENSITIVITY and (ctx.score is None or ctx.calib is None):
        raise BadInputError(
            "prune mode 'sensitivity' needs calibration data (a score); "
            "pass calibration data or choose mode 'uniform' or 'global'"
        )
    if cfg.mode is not Mode.AUTO:
        return cfg.mode
    if cfg.sparsity is not None or cfg.per_layer:
        return Mode.UNIFORM
    if ctx.score is not None and ctx.calib is not None:
        return Mode.SENSITIVITY
    msg = (
        f"no calibration data: pruned every layer uniformly to the fallback sparsity "
        f"{FALLBACK_SPARSITY:g} without sensitivity analysis or bias correction; expect a "
        "larger accuracy loss than with calibration data"
    )
    log.warning(msg)
    notes.append("WARNING: " + msg)
    return Mode.UNIFORM


# ----------------------------------------------------------------------------- applying


class _Pruner:
    """Applies masks from the original weights and compensates them (re-runnable)."""

    def __init__(
        self, graph: gs.Graph, weights: list[Weight], cfg: Config, ctx: Context, notes: list[str]
    ):
        self.graph, self.weights, self.ctx, self.cfg = graph, weights, ctx, cfg
        self.originals = {w.tensor.name: w.frozen_values() for w in weights}
        self.comp = None
        if cfg.bias_correction and ctx.calib is not None:
            self.comp = self._compensator(ctx.calib, notes)
        elif cfg.bias_correction:
            notes.append("bias correction skipped: no calibration data")

    def _compensator(self, feeds: Mapping[str, np.ndarray], notes: list[str]) -> Compensator:
        self.ctx.progress("prune: collecting calibration statistics")
        return Compensator(
            self.graph,
            self.weights,
            feeds,
            refit=self.cfg.refit,
            damp=self.cfg.damp,
            notes=notes,
            originals=self.originals,
            progress=lambda m: self.ctx.progress("prune: " + m),
        )

    def refit_on(self, ctx: Context) -> None:
        """Switch to another calibration set (and scorer): statistics are collected anew."""
        for w in self.weights:
            self.restore(w)
        if self.comp is not None:
            self.comp.finish()
            self.comp = self._compensator(ctx.calib, [])
        self.ctx = ctx

    def apply(self, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Prune every weight by its mask (others back to original), then compensate."""
        changed = []
        for w in self.weights:
            if self.comp is not None:
                self.comp.restore(w)
            keep = masks.get(w.tensor.name)
            orig = self.originals[w.tensor.name]
            w.set_values(orig if keep is None else apply_mask(orig, keep))
            if keep is not None and not keep.all():
                changed.append(w)
        return self.comp.sweep(changed, masks) if self.comp is not None else {}

    def alone(self, w: Weight, keep: np.ndarray) -> None:
        """Prune one layer by `keep`, every other layer original, and compensate it."""
        w.set_values(apply_mask(self.originals[w.tensor.name], keep))
        if self.comp is not None:
            self.comp.alone(w, keep)

    def restore(self, w: Weight) -> None:
        if self.comp is not None:
            self.comp.restore(w)
        else:
            w.set_values(self.originals[w.tensor.name])

    def method(self, w: Weight) -> str:
        return self.comp.method(w) if self.comp is not None else "none"

    def finish(self) -> None:
        if self.comp is not None:
            self.comp.finish()


# ----------------------------------------------------------------------------- the pass


def run(graph: gs.Graph, cfg: Config, ctx: Context) -> PassReport:
    """Prune the selected weights of `graph` in place; see the module docstring."""
    report = PassReport(NAME, modified=False)
    weights, protected = _select(graph, cfg)
    if not weights:
        report.notes.append("no Conv/Gemm/MatMul weight to prune")
        return report
    mode = _resolve_mode(cfg, ctx, report.notes)
    ratios = resolve_per_layer(weights, cfg.per_layer)
    pinned = {k: v for k, v in ratios.items() if _explicit(k, weights, cfg.per_layer)}
    pinned.update({n: 0.0 for n in protected if any(w.tensor.name == n for w in weights)})
    facts = {w.tensor.name: _facts(w) for w in weights}
    searching = mode is Mode.SENSITIVITY or (mode is Mode.GLOBAL and cfg.sparsity is None)
    search_ctx = _holdout_context(graph, cfg, ctx, report.notes) if searching else ctx
    pruner = _Pruner(graph, weights, cfg, search_ctx, report.notes)
    threshold = None
    if mode is Mode.UNIFORM:
        default = (
            cfg.sparsity
            if cfg.sparsity is not None
            else (FALLBACK_SPARSITY if cfg.per_layer is None else 0.0)
        )
        if cfg.mode is Mode.UNIFORM and cfg.sparsity is None and cfg.per_layer is None:
            report.notes.append(f"no sparsity given: used the fallback {FALLBACK_SPARSITY:g}")
        table = {w.tensor.name: ratios.get(w.tensor.name, default) for w in weights}
        masks = uniform_masks(pruner.originals, {**table, **{n: 0.0 for n in protected}})
        shifts = pruner.apply(masks)
    elif mode is Mode.GLOBAL:
        masks, threshold, shifts = global_search(pruner, cfg, pinned, report.notes)
    else:
        masks, shifts = sensitivity_search(pruner, cfg, pinned, report.notes, facts)
    if pruner.ctx is not ctx:  # decided on held-out data: the final fit uses all of it
        pruner.refit_on(ctx)
        shifts = pruner.apply(masks)
    for w in weights:
        facts[w.tensor.name]["correction"] = pruner.method(w) if w.tensor.name in shifts else "none"
    pruner.finish()
    graph.cleanup().toposort()
    _fill_report(report, weights, masks, facts, shifts, threshold, pinned, mode)
    return report


def _holdout_context(graph: gs.Graph, cfg: Config, ctx: Context, notes: list[str]) -> Context:
    """With refit, the fit flatters a score measured on its own data (VGG, 95%: 1.2 points
    lost on the fitted half of the calibration set, 3.8 on the other half, 3.65 on the eval
    set). So searches fit on the even samples and score the odd ones: top-1 accuracy if
    labels are known, else top-1 agreement with the unpruned model."""
    if not (cfg.holdout and cfg.bias_correction and cfg.refit) or ctx.calib is None:
        return ctx
    n = len(next(iter(ctx.calib.values())))
    if n < 2 * MIN_HOLDOUT:
        notes.append(
            f"calibration set too small to hold out ({n} < {2 * MIN_HOLDOUT}): "
            "decisions are scored on the samples the refit fits"
        )
        return ctx
    fit = {k: v[0::2] for k, v in ctx.calib.items()}
    held = {k: v[1::2] for k, v in ctx.calib.items()}
    labels = None if ctx.labels is None else np.asarray(ctx.labels)[1::2]
    reference = None if labels is not None else C.run_graph(graph, held)
    score = C.make_scorer(held, labels=labels, reference=reference)
    notes.append(
        f"search scored on {n - n // 2} held-out calibration samples, compensation "
        f"fitted on the other {n // 2}; the final refit uses all {n}"
    )
    return Context(
        calib=fit,
        labels=None if labels is None else np.asarray(ctx.labels)[0::2],
        score=score,
        progress=ctx.progress,
    )


def _explicit(tensor: str, weights: list[Weight], table: Mapping[str, float] | None) -> bool:
    """True if the weight is matched by a per_layer key other than '*'."""
    w = next(w for w in weights if w.tensor.name == tensor)
    return any(
        k != "*" and (fnmatch.fnmatchcase(w.layer, k) or fnmatch.fnmatchcase(w.tensor.name, k))
        for k in (table or {})
    )


def _facts(w: Weight) -> dict[str, Any]:
    return {
        "layer": w.layer,
        "op": w.node.op,
        "kind": w.kind,
        "shape": list(w.values.shape),
        "params": int(w.values.size),
    }


def _fill_report(
    report: PassReport,
    weights: list[Weight],
    masks: Mapping[str, np.ndarray],
    facts: dict[str, dict[str, Any]],
    shifts: Mapping[str, Any],
    threshold: float | None,
    pinned: Mapping[str, float],
    mode: Mode,
) -> None:
    report.notes.insert(0, f"mode: {mode.value}")
    total = zeros = 0
    for w in weights:
        name, values = w.tensor.name, w.values
        f = facts[name]
        f["sparsity"] = sparsity_of(values)
        f["target"] = float(1 - masks[name].mean()) if name in masks else 0.0
        f["pinned"] = name in pinned
        f["bias_corrected"] = name in shifts
        if name in shifts:
            f["bias_shift"] = float(np.max(np.abs(shifts[name]))) if shifts[name].size else 0.0
        if threshold is not None and name not in pinned:
            f["threshold"] = threshold
        report.per_tensor[name] = f
        total += values.size
        zeros += values.size - np.count_nonzero(values)
        report.modified |= name in masks
    if total:
        report.notes.append(f"overall sparsity {zeros / total:.4f} of {total} weights")
