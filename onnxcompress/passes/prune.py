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
  of the calibration score over `tolerance` points; the largest ratio within tolerance is the layer's
  CAP. Then all layers are pruned jointly at their caps. If the joint drop exceeds `max_drop`
  (None: 0.5 points), the allocation backs off along one capped global
  threshold: ratio_l = min(frac_l(|W| <= t), cap_l), with the pooled sparsity bisected on the
  JOINT drop. So the scan protects fragile layers and the threshold decides between the rest,
  pruning the big, low-magnitude layers hardest; Deep Compression's pattern (FC pruned far
  harder than conv) comes out of it. (A per-weight-cost knapsack over the scan curves was
  tried first: top-1 on 1,000 images cannot see small per-layer damage, so "free" steps
  added up to large joint drops.)
- ``auto``: ``uniform`` if `sparsity` or `per_layer` is given; else ``sensitivity`` when a
  score is available; else ``uniform`` at FALLBACK_SPARSITY (0.5) with a warning note, because
  without data the only safe choice is a moderate one.

Compensation (`bias_correction`, on when calibration data is available; compensate/),
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

The searches (global, sensitivity) live in passes/prune_search.py as functions from an
evaluator to masks; this module applies masks, compensates and scores.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..calibration.service import Scorer
from ..compensate import Compensator
from ..data import Dataset
from ..errors import BadInputError
from ..graph import Weight, iter_weights
from ..kernels.masks import apply_mask, check_ratio, sparsity_of
from ..scope import Scope, resolve_table
from . import prune_search as S
from .base import Context, PassReport

log = logging.getLogger(__name__)

NAME = "prune"
STAGE = "pruned"
BUDGET_KEY = "max_drop"
EMITS_OPS: frozenset[str] = frozenset()
FALLBACK_SPARSITY = 0.5
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


# ----------------------------------------------------------------------------- choices


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
    if cfg.mode is Mode.SENSITIVITY and ctx.calibration is None:
        raise BadInputError(
            "prune mode 'sensitivity' needs calibration data (a score); "
            "pass calibration data or choose mode 'uniform' or 'global'"
        )
    if cfg.mode is not Mode.AUTO:
        return cfg.mode
    if cfg.sparsity is not None or cfg.per_layer:
        return Mode.UNIFORM
    if ctx.calibration is not None:
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
    """Applies masks to the original weights, compensates them on `fit` data, and scores the
    result on `score` data: the evaluator the searches call."""

    def __init__(self, graph: gs.Graph, weights: list[Weight], cfg: Config, ctx: Context,
                 fit: Dataset | None, notes: list[str]):
        self.graph, self.weights, self.cfg, self.ctx = graph, weights, cfg, ctx
        self.by_name = {w.tensor.name: w for w in weights}
        self.originals = {w.tensor.name: w.frozen_values() for w in weights}
        # the reference the compensation and the scores compare to: the graph before pruning
        self.snapshot = ctx.calibration.snapshot(graph) if ctx.calibration else None
        self.comp: Compensator | None = None
        self.scorer: Scorer | None = None
        self.base = 0.0
        self._alone: str | None = None
        if cfg.bias_correction and fit is not None:
            self.comp = self._compensator(fit, notes)
        elif cfg.bias_correction:
            notes.append("bias correction skipped: no calibration data")

    def _compensator(self, data: Dataset, notes: list[str]) -> Compensator:
        self.ctx.progress("prune: collecting calibration statistics")
        return Compensator(self.graph, self.weights, self.snapshot, data, refit=self.cfg.refit,
                           damp=self.cfg.damp, notes=notes, originals=self.originals,
                           progress=lambda m: self.ctx.progress("prune: " + m))

    def fit_on(self, data: Dataset) -> None:
        """Compensate on `data` from now on (statistics collected anew)."""
        for w in self.weights:
            self.restore(w)
        if self.comp is not None:
            self.comp.finish()
            self.comp = self._compensator(data, [])

    def score_on(self, scorer: Scorer) -> None:
        """Score with `scorer` from now on; its score of the unpruned graph is the base."""
        self.scorer = scorer
        self.base = scorer(self.graph)

    def apply(self, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Prune every weight by its mask (others back to original), then compensate."""
        self._alone = None
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

    def drop(self) -> float:
        return self.base - self.scorer(self.graph)

    def drop_joint(self, masks: S.Masks) -> float:
        self.apply(masks)
        drop = self.drop()
        pooled = sum(m.size - int(m.sum()) for m in masks.values()) / max(
            sum(m.size for m in masks.values()), 1)
        self.ctx.progress(f"prune: joint sparsity {pooled:.3f} drop {drop:+.2f} points")
        return drop

    def drop_alone(self, name: str, keep: np.ndarray) -> float:
        """Prune one layer by `keep`, every other layer original, compensate and score it."""
        if self._alone is not None and self._alone != name:
            self.restore(self.by_name[self._alone])
        self._alone = name
        w = self.by_name[name]
        w.set_values(apply_mask(self.originals[name], keep))
        if self.comp is not None:
            self.comp.alone(w, keep)
        drop = self.drop()
        self.ctx.progress(f"prune: scan {w.layer} s={1 - keep.mean():.2f} drop={drop:+.2f}")
        return drop

    def end_scan(self) -> None:
        """Put back the layer the last `drop_alone` left pruned."""
        if self._alone is not None:
            self.restore(self.by_name[self._alone])
            self._alone = None

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
    table = resolve_table(weights, cfg.per_layer)
    pinned = {k: e.value for k, e in table.items() if e.explicit}
    pinned.update({n: 0.0 for n in protected if any(w.tensor.name == n for w in weights)})
    searching = mode is Mode.SENSITIVITY or (mode is Mode.GLOBAL and cfg.sparsity is None
                                             and (cfg.per_layer or {}).get("*") is None)
    if searching and (ctx.calibration is None or (mode is Mode.GLOBAL and cfg.max_drop is None)):
        raise BadInputError("prune mode 'global' needs 'sparsity' (the pooled ratio), or "
                            "'max_drop' and calibration data to search for it")
    holdout = searching and _use_holdout(cfg, ctx, report.notes)
    calibration = ctx.calibration
    fit, held = calibration.split() if holdout else (
        calibration.data if calibration else None, None)
    pruner = _Pruner(graph, weights, cfg, ctx, fit, report.notes)
    result = _choose(pruner, cfg, ctx, mode, weights, table, protected, pinned, held)
    if holdout:  # decided on held-out data: the final fit uses all of it
        pruner.fit_on(calibration.data)
    shifts = pruner.apply(result.masks)
    for w in weights:
        w_facts = _facts(w)
        w_facts["correction"] = pruner.method(w) if w.tensor.name in shifts else "none"
        report.per_tensor[w.tensor.name] = w_facts
    pruner.finish()
    graph.cleanup().toposort()
    _fill_report(report, weights, result, shifts, pinned, mode)
    if searching:
        report.spent = max(result.drop, 0.0)
    if mode is Mode.UNIFORM and cfg.per_layer and cfg.sparsity is None:
        report.notes[0] = "mode: per-layer table (layers it does not name are not pruned)"
    return report


def _choose(pruner: _Pruner, cfg: Config, ctx: Context, mode: Mode, weights: list[Weight],
            table: Mapping, protected: set[str], pinned: Mapping[str, float],
            held: Dataset | None) -> S.SearchResult:
    """The masks of the mode, searched against the calibration score where it searches."""
    originals = pruner.originals
    if mode is Mode.UNIFORM:
        default = (cfg.sparsity if cfg.sparsity is not None
                   else (FALLBACK_SPARSITY if cfg.per_layer is None else 0.0))
        ratios = {w.tensor.name: table[w.tensor.name].value if w.tensor.name in table
                  else default for w in weights}
        ratios.update({n: 0.0 for n in protected})
        return S.SearchResult(S.uniform_masks(originals, ratios))
    pooled = cfg.sparsity if cfg.sparsity is not None else (cfg.per_layer or {}).get("*")
    if mode is Mode.GLOBAL and pooled is not None:
        masks, t = S.global_masks(originals, pinned, pooled)
        return S.SearchResult(masks, threshold=t, note=f"global magnitude threshold {t:.6g}")
    pruner.score_on(ctx.calibration.scorer(pruner.snapshot, held))
    base_note = f"base score {pruner.base:.2f} ({ctx.calibration.metric.value})"
    if mode is Mode.GLOBAL:
        result = S.global_search(originals, pinned, cfg.ladder, cfg.max_drop, pruner.drop_joint)
    else:
        result = S.sensitivity_search(originals, pinned, cfg.ladder, cfg.tolerance, cfg.max_drop,
                                      pruner.drop_alone, pruner.drop_joint)
    pruner.end_scan()
    result.note = f"{result.note}; {base_note}"
    return result


def _use_holdout(cfg: Config, ctx: Context, notes: list[str]) -> bool:
    """With refit, the fit flatters a score measured on its own data (VGG, 95%: 1.2 points
    lost on the fitted half of the calibration set, 3.8 on the other half, 3.65 on the eval
    set). So searches fit on the even samples and score the odd ones: top-1 accuracy if
    labels are known, else top-1 agreement with the unpruned model."""
    if not (cfg.holdout and cfg.bias_correction and cfg.refit) or ctx.calibration is None:
        return False
    n = len(ctx.calibration.data)
    if not ctx.calibration.can_split():
        notes.append(f"calibration set too small to hold out ({n} < 200): decisions are "
                     "scored on the samples the refit fits")
        return False
    notes.append(f"search scored on {n - n // 2} held-out calibration samples, compensation "
                 f"fitted on the other {n // 2}; the final refit uses all {n}")
    return True


def _facts(w: Weight) -> dict[str, Any]:
    return {"layer": w.layer, "op": w.node.op, "kind": w.kind, "shape": list(w.values.shape),
            "params": int(w.values.size)}


def _fill_report(report: PassReport, weights: list[Weight], result: S.SearchResult,
                 shifts: Mapping[str, Any], pinned: Mapping[str, float], mode: Mode) -> None:
    report.notes.insert(0, f"mode: {mode.value}")
    if result.note:
        report.notes.append(result.note)
    total = zeros = 0
    for w in weights:
        name, values = w.tensor.name, w.values
        f = report.per_tensor[name]
        f["sparsity"] = sparsity_of(values)
        f["target"] = float(1 - result.masks[name].mean()) if name in result.masks else 0.0
        f["pinned"] = name in pinned
        f["bias_corrected"] = name in shifts
        if name in shifts:
            f["bias_shift"] = float(np.max(np.abs(shifts[name]))) if shifts[name].size else 0.0
        if result.threshold is not None and name not in pinned:
            f["threshold"] = result.threshold
        if name in result.curves:
            f["scan"] = {f"{r:g}": round(d, 3) for r, d in result.curves[name]}
            f["cap"] = result.caps[name]
        total += values.size
        zeros += values.size - np.count_nonzero(values)
        report.modified |= name in result.masks
    if total:
        report.notes.append(f"overall sparsity {zeros / total:.4f} of {total} weights")
