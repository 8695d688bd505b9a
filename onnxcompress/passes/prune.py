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
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import BadInputError
from ..graph import Scope, Weight, iter_weights
from ..kernels.masks import (
    apply_mask,
    check_ratio,
    global_threshold,
    magnitude_mask,
    sparsity_of,
    threshold_mask,
)
from . import calibrate as C
from .compensate import Compensator
from .base import Context, PassReport

log = logging.getLogger(__name__)

NAME = "prune"
EPS = 1e-9  # points; scores are ratios of counts, so 100 * (a - b) carries rounding noise
FALLBACK_SPARSITY = 0.5
MIN_HOLDOUT = 100  # samples per half below which the calibration set is not split
DEFAULT_MAX_DROP = 0.5  # points on the calibration data, when sensitivity has no max_drop
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
        self.originals = {w.tensor.name: w.values.copy() for w in weights}
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


# ----------------------------------------------------------------------------- planning


def _uniform_masks(
    originals: Mapping[str, np.ndarray], ratios: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """Per-layer magnitude masks of the ORIGINAL weights (the graph may hold refit ones)."""
    return {
        name: magnitude_mask(w, ratios[name])
        for name, w in originals.items()
        if ratios.get(name, 0.0) > 0
    }


def _global_masks(
    originals: Mapping[str, np.ndarray], pinned: Mapping[str, float], sparsity: float
) -> tuple[dict[str, np.ndarray], float]:
    pool = {name: w for name, w in originals.items() if name not in pinned}
    t = global_threshold(list(pool.values()), sparsity)
    masks = {name: threshold_mask(w, t) for name, w in pool.items()}
    masks.update(_uniform_masks({n: w for n, w in originals.items() if n in pinned}, pinned))
    return masks, t


def _scan(
    pruner: _Pruner, layers: list[Weight], ladder: tuple[float, ...], tolerance: float, base: float
) -> dict[str, list[tuple[float, float]]]:
    """Per layer: [(ratio, drop in points)] pruning it alone, up to the first drop > tolerance."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for i, w in enumerate(layers):
        curve = curves.setdefault(w.tensor.name, [])
        orig = pruner.originals[w.tensor.name]
        for ratio in ladder:
            pruner.alone(w, magnitude_mask(orig, ratio))
            drop = 100.0 * (base - pruner.ctx.score(pruner.graph))
            curve.append((ratio, drop))
            pruner.ctx.progress(
                f"prune: scan {i + 1}/{len(layers)} {w.layer} s={ratio:.2f} drop={drop:+.2f}"
            )
            if drop > tolerance + EPS:
                break
        pruner.restore(w)
    return curves


def _allowed(curve: list[tuple[float, float]], tolerance: float) -> int:
    """Index of the largest rung before the first one over tolerance (-1 = none passes)."""
    best = -1
    for i, (_, drop) in enumerate(curve):
        if drop > tolerance + EPS:
            break
        best = i
    return best


def _capped_global_masks(
    originals: Mapping[str, np.ndarray], caps: Mapping[str, float], sparsity: float
) -> dict[str, np.ndarray]:
    """One magnitude threshold t over the layers in `caps`, each layer pruning no more than
    its cap: ratio_l = min(frac_l(|W| <= t), cap_l), with t chosen so that the pooled
    sparsity is `sparsity` (or every layer at its cap, if that is less)."""
    mags = {n: np.sort(np.abs(originals[n]).reshape(-1)) for n in caps}
    total = sum(m.size for m in mags.values())
    want = min(sparsity, 1.0) * total

    def pruned(t: float) -> float:
        return sum(
            min(np.searchsorted(m, t, side="right"), caps[n] * m.size) for n, m in mags.items()
        )

    lo, hi = 0.0, max((float(m[-1]) for m in mags.values() if m.size), default=0.0)
    for _ in range(60):  # bisection on t (floats: 60 halvings reach machine precision)
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pruned(mid) >= want else (mid, hi)
    ratios = {
        n: min(np.searchsorted(m, hi, side="right") / max(m.size, 1), caps[n])
        for n, m in mags.items()
    }
    return _uniform_masks({n: originals[n] for n in caps}, ratios)


def _sensitivity(
    pruner: _Pruner,
    cfg: Config,
    pinned: Mapping[str, float],
    notes: list[str],
    facts: dict[str, dict[str, Any]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Scan for per-layer caps, then fit the joint drop; returns the masks and bias changes."""
    base = pruner.ctx.score(pruner.graph)
    scanned = [w for w in pruner.weights if w.tensor.name not in pinned]
    curves = _scan(pruner, scanned, cfg.ladder, cfg.tolerance, base)
    caps = {}
    for name, curve in curves.items():
        facts[name]["scan"] = {f"{r:g}": round(d, 3) for r, d in curve}
        rung = _allowed(curve, cfg.tolerance)
        caps[name] = cfg.ladder[rung] if rung >= 0 else 0.0
        facts[name]["cap"] = caps[name]
    pinned_masks = _uniform_masks(pruner.originals, pinned)
    max_drop = cfg.max_drop if cfg.max_drop is not None else DEFAULT_MAX_DROP

    def attempt(pooled: float) -> tuple[float, dict, dict]:
        masks = {**_capped_global_masks(pruner.originals, caps, pooled), **pinned_masks}
        shifts = pruner.apply(masks)
        drop = 100.0 * (base - pruner.ctx.score(pruner.graph))
        pruner.ctx.progress(f"prune: pooled {pooled:.3f} joint drop {drop:+.2f} points")
        return drop, masks, shifts

    sizes = {n: pruner.originals[n].size for n in caps}
    full = sum(caps[n] * sizes[n] for n in caps) / max(sum(sizes.values()), 1)
    drop, masks, shifts = attempt(full)  # every layer at its cap
    pooled = full
    if drop > max_drop + EPS:
        pooled, (drop, masks, shifts) = _bisect(attempt, 0.0, full, max_drop)
    notes.append(
        f"sensitivity: base score {100 * base:.2f}%, joint drop {drop:.2f} points at pooled "
        f"sparsity {pooled:.3f} of the scanned layers (caps at {full:.3f}; tolerance "
        f"{cfg.tolerance:g} per layer, max_drop {max_drop:g})"
    )
    return masks, shifts


def _bisect(
    attempt: Callable[[float], tuple[float, dict, dict]],
    lo: float,
    hi: float,
    max_drop: float,
    steps: int = 6,
) -> tuple[float, tuple[float, dict, dict]]:
    """Largest x in [lo, hi] with attempt(x)'s drop <= max_drop (drop assumed to grow with
    x; hi is known to fail). The graph is left holding the returned attempt."""
    best, last = None, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        last = (mid, attempt(mid))
        if last[1][0] <= max_drop + EPS:
            best, lo = last, mid
        else:
            hi = mid
    if best is None:
        return 0.0, attempt(0.0)
    return best if best is last else (best[0], attempt(best[0]))


def _global(
    pruner: _Pruner, cfg: Config, pinned: Mapping[str, float], notes: list[str]
) -> tuple[dict[str, np.ndarray], float, dict[str, np.ndarray]]:
    """One pooled threshold at `sparsity`; without it, the largest ladder ratio whose joint
    drop is within `max_drop` (bisection, assuming the drop grows with the ratio)."""
    pooled = cfg.sparsity if cfg.sparsity is not None else (cfg.per_layer or {}).get("*")
    if pooled is not None:
        masks, t = _global_masks(pruner.originals, pinned, pooled)
        notes.append(f"global magnitude threshold {t:.6g}")
        return masks, t, pruner.apply(masks)
    if cfg.max_drop is None or pruner.ctx.score is None:
        raise BadInputError(
            "prune mode 'global' needs 'sparsity' (the pooled ratio), or "
            "'max_drop' and calibration data to search for it"
        )
    base = pruner.ctx.score(pruner.graph)

    def attempt(ratio: float) -> tuple[float, dict, dict]:
        masks, _ = _global_masks(pruner.originals, pinned, ratio)
        shifts = pruner.apply(masks)
        drop = 100.0 * (base - pruner.ctx.score(pruner.graph))
        pruner.ctx.progress(f"prune: global {ratio:.3f} joint drop {drop:+.2f} points")
        return drop, masks, shifts

    ratio = cfg.ladder[-1]
    drop, masks, shifts = attempt(ratio)
    if drop > cfg.max_drop + EPS:
        ratio, (drop, masks, shifts) = _bisect(attempt, 0.0, ratio, cfg.max_drop)
    t = _global_masks(pruner.originals, pinned, ratio)[1]
    notes.append(
        f"global: searched the pooled sparsity for max_drop {cfg.max_drop:g}: "
        f"{ratio:.3f} (threshold {t:.6g}, joint drop {drop:.2f}, base score "
        f"{100 * base:.2f}%)"
    )
    return masks, t, shifts


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
        masks = _uniform_masks(pruner.originals, {**table, **{n: 0.0 for n in protected}})
        shifts = pruner.apply(masks)
    elif mode is Mode.GLOBAL:
        masks, threshold, shifts = _global(pruner, cfg, pinned, report.notes)
    else:
        masks, shifts = _sensitivity(pruner, cfg, pinned, report.notes, facts)
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
