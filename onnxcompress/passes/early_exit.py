"""Early exits inserted after training (BranchyNet: Teerapittayanon, McDanel & Kung, ICPR 2016;
adaptive computation per input as in D2NN, Liu & Deng 2018, and SACT, Figurnov et al. 2017),
with a frozen backbone, heads distilled from the model itself and thresholds calibrated on
held-out data; the result is plain ONNX.

Method.
1. Cuts (graph/cuts.py): tensors a that carry everything the rest of the network needs, so it
   can run on any subset of the batch. FLOPs per node come from shape inference
   (graph/cost.py); the plan charges each node at batch 1 its FLOPs plus `weight_cost` per
   weight of a fully connected layer (a matrix-vector product reads every weight for two
   FLOPs: memory-bound, about ten times slower per FLOP than a convolution here). c(a) is that
   cost before a over the model's. Candidates: cuts with c <= `max_cost`, at most
   `max_candidates` spread over the cost range (or the ones `exits` names).
2. Heads (kernels/heads.py), one per candidate: a is average-pooled to a g x g grid (g of
   8, 7, 6, 4, 3, 2, 1: the most cells with C g^2 <= `max_features`, windows that overlap
   counting half, as they cost several reads per input: ONNX Runtime's plain pooling reads
   about 3 G inputs/s here, `pool_cost` FLOPs each in the plan), flattened, and mapped by
   one linear layer to the K class logits. The frozen backbone's features come from ONNX Runtime on the
   fit half of the calibration data (the service's split), and the teacher is the model's own
   logits Z: `target` logits (the default) regresses Z (Ba & Caruana 2014, closed form, lam by
   GCV), soft fits Hinton's soft targets softmax(Z / T), mixed adds the labels' cross-entropy
   with weight `label_weight` (Hinton et al. 2015). On the zoo the regression saved the most
   at the budget, and the grid mattered more than the head's depth: a 1x1 convolution + ReLU
   before the pooling (trained in numpy) did worse than the linear head on a 7x7 grid, at ten
   times the fitting time (docs/EARLY_EXIT.md).
3. Thresholds and placement (kernels/exits.py), on the held-out half: a sample leaves at the
   first exit whose confidence s(z) (`criterion`: -entropy, max-prob or margin) reaches the
   exit's threshold. Expected cost per sample E[c] = sum_k share_k (c(a_k) + heads so far),
   each evaluated head costing its own plus `exit_overhead` (the fixed cost of its ten-odd
   small ONNX Runtime nodes and an If at batch 1, which FLOPs do not see: 6-12 us here, what
   100-170 FLOP/ns, the rate these nets run at, do in 1 MFLOP). Thresholds minimize E[c]
   subject to
   100 (L - G) / n + `margin` * 100 sqrt(L + G) / n <= budget (L samples the model got right and
   the exit gets wrong, G the reverse, against the labels or, without them, the model's own
   top-1), by a Lagrangian sweep with exact coordinate descent. An exit left at threshold inf
   is not built: placement is the same search. The margin (in standard errors) keeps the
   estimate honest: thresholds fitted to a held-out sample flatter it, and a backbone scores
   its training images better than new ones.
4. Graph (passes/early_exit_graph.py): per-sample exits for any batch size (Gather the samples
   that stay, ScatterND the results back in input order), an If on a one-element condition
   per exit at batch 1; the original outputs keep their names, shapes and types, and an extra
   int64 output (exits.EXIT_OUTPUT) names the exit each sample took. The exit table (costs,
   thresholds, held-out shares) rides in the graph's doc string (onnxcompress.exits).

The budget (`max_drop`, points) defaults to 0.5: of top-1 accuracy with labels, else of
agreement with the original model. When no exit fits it the model is left unchanged and the
report says the budget was not met.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from .. import exits as X
from ..data import BATCH
from ..errors import BadInputError
from ..graph.batch import free_batch
from ..graph.cost import graph_costs, infer_shapes
from ..graph.cuts import Classifier, Cut, cut_points, find_classifier, spread
from ..kernels import exits as plan_kernel
from ..kernels import heads as H
from .base import Context, PassReport
from .early_exit_graph import EMITTED_OPS, ExitHead, build

log = logging.getLogger(__name__)

NAME = "early_exit"
STAGE = "early-exit"
BUDGET_KEY = "max_drop"
EMITS_OPS = EMITTED_OPS
RUNS_LAST = True  # exits hide the backbone's weights inside If branches: no weight pass after
DEFAULT_DROP = 0.5
MIN_HALF = 8  # calibration samples per half (fit / held out), at the least
CAPTURE_BYTES = 256 << 20  # activations captured per batch
HALVES = (slice(0, None, 2), slice(1, None, 2))  # Calibration.split(): fit, held out
GRIDS = (8, 7, 6, 4, 3, 2, 1)
MAX_OVERHEAD = 0.25  # an exit's fixed cost, at most this share of the model
FC_OPS = frozenset({"Gemm", "MatMul"})


class Criterion(str, enum.Enum):
    ENTROPY = "entropy"
    MAX_PROB = "max-prob"
    MARGIN = "margin"


class Target(str, enum.Enum):
    AUTO = "auto"
    LOGITS = "logits"
    SOFT = "soft"
    MIXED = "mixed"


@dataclass(frozen=True)
class Config:
    """Settings of the early-exit pass (see the module docstring)."""

    exits: str | int = "auto"  # "auto", a number of exits, or "NODE,NODE" (cut nodes)
    criterion: Criterion = Criterion.MAX_PROB
    max_drop: float | None = None  # points (None: DEFAULT_DROP)
    margin: float = 1.5  # standard errors added to the estimated drop
    target: Target = Target.AUTO  # what heads learn (auto: logits), soft targets, + labels
    temperature: float = 2.0  # soft targets' T
    label_weight: float = 0.5  # mixed: weight of the labels' cross-entropy
    grid: int | None = None  # pooled grid side (None: the largest of GRIDS within max_features)
    max_features: int = 2048  # head inputs C g^2 at most
    max_cost: float = 0.9  # candidates cost at most this fraction of the model
    max_candidates: int = 8
    exit_overhead: float = 1.0e6  # plan cost of evaluating an exit besides its FLOPs
    weight_cost: float = 6.0  # plan cost per fully connected weight at batch 1, in FLOPs
    pool_cost: float = 60.0  # plan cost per input a head's pooling window reads, in FLOPs
    exit_output: str = X.EXIT_OUTPUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "criterion", Criterion(self.criterion))
        object.__setattr__(self, "target", Target(self.target))
        object.__setattr__(self, "exits", _parse_exits(self.exits))
        if self.max_drop is not None and self.max_drop < 0:
            raise ValueError(f"max_drop is points of accuracy and must be >= 0, got {self.max_drop}")
        if self.margin < 0 or self.temperature <= 0 or not 0 <= self.label_weight <= 1:
            raise ValueError("margin must be >= 0, temperature > 0, label_weight in [0, 1]")
        if self.grid is not None and self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")
        if min(self.exit_overhead, self.weight_cost, self.pool_cost) < 0:
            raise ValueError("exit_overhead, weight_cost and pool_cost must be >= 0")
        if not 0 < self.max_cost <= 1 or self.max_candidates < 1 or self.max_features < 1:
            raise ValueError("max_cost must be in (0, 1], max_candidates and max_features >= 1")


def _parse_exits(value: str | int | Sequence[str]) -> str | int | tuple[str, ...]:
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        if int(value) < 1:
            raise ValueError(f"exits: a number of exits must be >= 1, got {value}")
        return int(value)
    if isinstance(value, str):
        if value.strip() == "auto":
            return "auto"
        value = value.split(",")
    names = tuple(v.strip() for v in value if v.strip())
    if not names:
        raise ValueError("exits: expected 'auto', a number, or node names separated by commas")
    return names


# ----------------------------------------------------------------------------- choices


@dataclass
class _Candidate:
    cut: Cut
    shape: H.HeadShape  # pooling and features of its head
    head_flops: int
    plan_base: float = 0.0  # plan cost before the cut / the model's
    plan_head: float = 0.0  # plan cost of evaluating the exit / the model's
    head: H.Head | None = None


def _plan_costs(costs: Sequence, cfg: Config) -> np.ndarray:
    """Cumulative plan cost after each node (module docstring, step 1)."""
    return np.cumsum([c.flops + (cfg.weight_cost * c.params if c.op in FC_OPS else 0)
                      for c in costs], dtype=np.float64)


def _candidates(cuts: list[Cut], why: dict[str, str], cfg: Config, k: int,
                plan: np.ndarray) -> list[_Candidate]:
    if isinstance(cfg.exits, tuple):
        by_node = {c.node: c for c in cuts}
        chosen = []
        for name in cfg.exits:
            if name in by_node:
                chosen.append(by_node[name])
            elif name in why:
                raise BadInputError(f"--exits: node '{name}' is not a valid exit point: "
                                    f"{why[name]}; valid points: {_list(cuts)}")
            else:
                raise BadInputError(f"--exits: no node named '{name}' (names as after "
                                    f"BatchNormalization folding); valid points: {_list(cuts)}")
        chosen = sorted(set(chosen), key=lambda c: c.position)
    else:
        chosen = spread([c for c in cuts if 0 < plan[c.position] / plan[-1] <= cfg.max_cost],
                        cfg.max_candidates)
    cands = [_shape_head(c, cfg, k) for c in chosen]
    for c in cands:
        c.plan_base = plan[c.cut.position] / plan[-1]
        overhead = min(cfg.exit_overhead, MAX_OVERHEAD * plan[-1])  # tiny graphs
        c.plan_head = (c.head_flops + cfg.pool_cost * c.shape.reads
                       + cfg.weight_cost * c.shape.features * k + overhead) / plan[-1]
    return cands


def _list(cuts: list[Cut]) -> str:
    return ", ".join(f"{c.node} ({100 * c.fraction:.0f}%)" for c in cuts) or "none"


def _shape_head(cut: Cut, cfg: Config, k: int) -> _Candidate:
    shape = H.head_shape(cut.dims, cfg.max_features, GRIDS, cfg.grid)
    return _Candidate(cut, shape, shape.reads + 2 * shape.features * k + 5 * k)


# ----------------------------------------------------------------------------- data


def _budget(cfg: Config) -> float:
    return DEFAULT_DROP if cfg.max_drop is None else float(cfg.max_drop)


def _check_data(ctx: Context, cfg: Config) -> None:
    if ctx.calibration is None:
        raise BadInputError("early exit needs calibration data (--calib) to fit the exit heads "
                            "and set their thresholds")
    budget = _budget(cfg)
    # one held-out sample must weigh no more than the budget, so that it can be resolved
    half = max(MIN_HALF, math.ceil(100.0 / budget) if budget > 0 else MIN_HALF)
    n = len(ctx.calibration.data)
    if n < 2 * half:
        raise BadInputError(
            f"the calibration data has {n} samples; early exit needs at least {2 * half}: "
            f"{half} to fit the exit heads and {half} held out to set their thresholds "
            f"(to resolve a {budget:g}-point budget)")


def _capture(ctx: Context, graph: gs.Graph, cands: list[_Candidate], logits: str,
             classes: int, data) -> tuple[list[np.ndarray], np.ndarray]:
    """Pooled features at every candidate and the teacher's logits, on `data`."""
    snapshot = ctx.calibration.snapshot(graph)
    names = [c.cut.tensor for c in cands]
    per_sample = sum(4 * int(np.prod(c.cut.dims)) for c in cands) + 4 * classes
    batch = int(np.clip(CAPTURE_BYTES // max(per_sample, 1), 1, 256))
    feats: list[list[np.ndarray]] = [[] for _ in cands]
    teacher = []
    if data.batch == BATCH:  # (a model with a fixed batch size keeps its own)
        data = replace(data, batch=batch)
    for got in snapshot.batches(data, [*names, logits]):
        for part, c in zip(feats, cands):
            part.append(H.pool_features(got[c.cut.tensor], c.shape.grid))
        teacher.append(got[logits].reshape(len(got[logits]), -1))
    return [np.concatenate(p) for p in feats], np.concatenate(teacher)


def _fit(c: _Candidate, feats: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None,
         target: Target, cfg: Config) -> H.Head:
    if target is Target.LOGITS:
        return H.fit_logits(feats, teacher)
    use = labels if target is Target.MIXED else None
    return H.fit_soft(feats, teacher, cfg.temperature, use, cfg.label_weight)


def _resolve_target(cfg: Config, labels: np.ndarray | None) -> Target:
    if cfg.target is not Target.AUTO:
        if cfg.target is Target.MIXED and labels is None:
            raise BadInputError("early exit target 'mixed' needs labels in the calibration data")
        return cfg.target
    return Target.LOGITS  # saved the most on the zoo (docs/EARLY_EXIT.md)


# ----------------------------------------------------------------------------- the pass


def run(graph: gs.Graph, cfg: Config, ctx: Context) -> PassReport:
    """Insert early exits into `graph` in place; see the module docstring."""
    report = PassReport(NAME, modified=False)
    where = "the model"
    _check_data(ctx, cfg)
    graph.toposort()
    report.notes += free_batch(graph, where)
    shapes = infer_shapes(graph)
    cls = find_classifier(graph, shapes, where)
    costs = graph_costs(graph)
    total = float(sum(c.flops for c in costs))
    cuts, why = cut_points(graph, shapes, costs, cls)
    if not cuts:
        raise BadInputError(f"{where}: no point to branch an exit from: no tensor before the "
                            f"logits '{cls.logits}' carries everything the rest needs")
    cands = _candidates(cuts, why, cfg, cls.classes, _plan_costs(costs, cfg))
    if not cands:
        raise BadInputError(f"{where}: no exit point costs less than {cfg.max_cost:.0%} of the "
                            f"model (points: {_list(cuts)})")
    fit, held = ctx.calibration.split()
    labels = ctx.calibration.labels
    target = _resolve_target(cfg, labels)
    ctx.progress(f"early_exit: capturing {len(cands)} candidate activations")
    # one pass over all the samples (one ONNX Runtime session), then the service's halves
    feats, z_all = _capture(ctx, graph, cands, cls.logits, cls.classes, ctx.calibration.data)
    f_fit, f_held = [f[HALVES[0]] for f in feats], [f[HALVES[1]] for f in feats]
    z_fit, z_held = z_all[HALVES[0]], z_all[HALVES[1]]
    assert len(z_fit) == len(fit) and len(z_held) == len(held)
    reference = held.labels if held.labels is not None else z_held.argmax(axis=1)
    ctx.progress("early_exit: fitting trial heads")
    for c, f in zip(cands, f_fit):
        c.head = H.fit_logits(f, z_fit)
    problem = _problem(cands, f_held, z_held, reference, cfg, total)
    plan = plan_kernel.search(problem)
    if target is not Target.LOGITS and plan.active:
        ctx.progress(f"early_exit: fitting {len(plan.active)} heads on {target.value} targets")
        cands = [cands[k] for k in plan.active]
        f_fit = [f_fit[k] for k in plan.active]
        f_held = [f_held[k] for k in plan.active]
        for c, f in zip(cands, f_fit):
            c.head = _fit(c, f, z_fit, fit.labels, target, cfg)
        problem = _problem(cands, f_held, z_held, reference, cfg, total)
        plan = plan_kernel.search(problem)
    report.notes.append(f"heads: {target.value} targets; criterion {cfg.criterion.value}; "
                        f"{len(fit)} samples to fit, {len(held)} held out; budget "
                        f"{_budget(cfg):g} points of {'accuracy' if labels is not None else 'agreement'}"
                        f" with a {cfg.margin:g}-SE margin")
    report.notes.append("candidates: " + ", ".join(
        f"{c.cut.node} at {100 * c.cut.fraction:.1f}%" for c in cands))
    if not plan.active:
        report.budget_met = False
        report.notes.append(f"no exit threshold keeps the estimated drop within "
                            f"{_budget(cfg):g} points while saving compute; the model is unchanged")
        return report
    table = _table(cands, plan, problem, cls, cfg, total, reference, z_held)
    heads = [ExitHead(cands[k].cut, cands[k].head.weight, cands[k].head.bias,
                      cands[k].shape.pool, float(plan.thresholds[k])) for k in plan.active]
    ctx.progress(f"early_exit: building {len(heads)} exits")
    build(graph, cls, heads, cfg.criterion.value, _fresh_output(graph, cfg.exit_output),
          X.with_table(graph.doc_string, table))
    report.modified = True
    report.budget_met = True
    report.spent = max(plan.drop, 0.0)
    _fill_report(report, table, plan, total, cuts, {c.name: c.flops for c in costs})
    return report


def _problem(cands: list[_Candidate], f_held: list[np.ndarray], z_held: np.ndarray,
             reference: np.ndarray, cfg: Config, total: float) -> plan_kernel.Problem:
    final = z_held.argmax(axis=1)
    scores, preds = [], []
    for c, f in zip(cands, f_held):
        z = c.head.logits(f)
        scores.append(H.confidence(z, cfg.criterion.value))
        preds.append(z.argmax(axis=1))
    preds = np.stack(preds, axis=1)
    delta = (preds == reference[:, None]).astype(np.int8) - (final == reference)[:, None].astype(
        np.int8)
    base = np.array([c.plan_base for c in cands])
    head = np.array([c.plan_head for c in cands])
    max_exits = cfg.exits if isinstance(cfg.exits, int) else None
    return plan_kernel.Problem(np.stack(scores, axis=1), delta, base, head, _budget(cfg),
                               cfg.margin, max_exits)


def _fresh_output(graph: gs.Graph, name: str) -> str:
    names = set(graph.tensors())
    out, i = name, 1
    while out in names:
        out, i = f"{name}_{i}", i + 1
    return out


# ----------------------------------------------------------------------------- report


def _describe(c: _Candidate, classes: int) -> str:
    shape = c.shape
    if len(c.cut.dims) == 1:
        return f"linear {shape.features}->{classes}"
    pool = ("global average pool" if shape.cells == (1, 1)
            else f"average pool to {shape.cells[0]}x{shape.cells[1]}")
    return f"{pool} + linear {shape.features}->{classes}"


def _table(cands: list[_Candidate], plan: plan_kernel.Plan, problem: plan_kernel.Problem,
           cls: Classifier, cfg: Config, total: float, reference: np.ndarray,
           z_held: np.ndarray) -> X.ExitTable:
    right = (z_held.argmax(axis=1) == reference).astype(np.int8)
    entries, spent = [], 0.0
    for k in plan.active:
        c = cands[k]
        spent += c.head_flops
        leave = plan.exit_of == k
        correct = problem.delta[leave, k] + right[leave]
        t = float(plan.thresholds[k])
        entries.append(X.ExitEntry(
            node=c.cut.node, tensor=c.cut.tensor, flops=c.cut.flops_before + spent,
            cost_fraction=c.cut.fraction,
            threshold=-t if cfg.criterion is Criterion.ENTROPY else t,
            head=_describe(c, cls.classes), share=float(leave.mean()),
            accuracy=float(100 * correct.mean()) if leave.any() else None))
    return X.ExitTable(cfg.criterion.value, cfg.exit_output, total, total + spent, entries)


def _fill_report(report: PassReport, table: X.ExitTable, plan: plan_kernel.Plan, total: float,
                 cuts: list[Cut], node_flops: dict[str, int]) -> None:
    rel = {"entropy": "<=", "max-prob": ">=", "margin": ">="}[table.criterion]
    kinds = {c.node: c.kind for c in cuts}
    for i, e in enumerate(table.exits):
        report.per_tensor[f"exit {i}"] = {
            "node": e.node, "tensor": e.tensor, "after": kinds.get(e.node, ""),
            "cost_fraction": e.cost_fraction, "flops": e.flops, "head": e.head,
            "criterion": table.criterion, "threshold": e.threshold,
            "held_share": e.share, "held_accuracy": e.accuracy}
    costs = np.asarray(table.path_flops())
    order = np.full(len(plan.thresholds) + 1, len(plan.active))  # candidate -> exit index
    order[plan.active] = np.arange(len(plan.active))
    expected = float(costs[order[plan.exit_of]].mean())
    report.per_tensor["model"] = {
        "flops": total, "expected_flops": expected, "final_flops": table.final_flops,
        "planned_cost": plan.cost, "held_lost": plan.lost, "held_gained": plan.gained,
        "estimated_drop": plan.drop, "cuts": {c.node: round(c.fraction, 4) for c in cuts},
        "node_flops": node_flops}
    report.notes.append("exits: " + "; ".join(
        f"{e.node} ({100 * e.cost_fraction:.1f}% of the FLOPs, {e.head}, {table.criterion} "
        f"{rel} {e.threshold:.4g}): {100 * e.share:.1f}% of held-out inputs"
        for e in table.exits))
    report.notes.append(
        f"on held-out data: expected FLOPs {expected / 1e6:.2f} M of {total / 1e6:.2f} M per "
        f"sample ({total / expected:.2f}x fewer), planned batch-1 cost {1 / plan.cost:.2f}x "
        f"lower; estimated drop {plan.drop:.2f} points ({plan.lost} lost, {plan.gained} gained)")
