"""Compute what the report shows: per-layer weight facts, per-stage sizes, fidelity. No printing."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import data as D
from .. import metrics as M
from ..exits import ExitTable
from ..graph import (
    all_nodes,
    resolve_weight,
    to_graph,
    unknown_ops,
    weight_index,
    weight_size,
    weight_sources,
)
from ..graph.cost import dims_of, graph_costs
from ..ops import ATTR_KERNEL_SHAPE, IN_WEIGHT_BITS, XNOR_CONV, words_per_tap

log = logging.getLogger(__name__)


@dataclass
class LayerRow:
    layer: str
    op: str
    shape: list[int]
    params: int
    sparsity: float  # fraction of exact zeros
    bits: int | None  # bits per index when the weight takes few values, else None (float)
    distinct: int  # distinct nonzero values
    bytes_before: int
    bytes_after: int
    stored_as: str  # how the bytes are stored: float32, gather codebook, container codec …
    binarized: bool = False  # 1-bit weights: an XnorConv, or a Conv whose weights are all +-1
    flops: int | None = None  # per sample, from shape inference (graph.cost)


@dataclass
class StageRow:
    stage: str
    bytes: int
    ratio: float
    score: float | None = None  # the report's metric (metrics.py), higher is better
    accuracy: float | None = None  # top-1 %, for class scores with labels
    agreement: float | None = None  # top-1 agreement with the uncompressed model, class scores
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    flops: float | None = None  # expected FLOPs per sample (early exits: measured on eval)


@dataclass
class ExitRow:
    """One exit of a model with early exits (the last row: the original output)."""

    exit: str  # "0", "1" … or "end"
    node: str  # the cut it branches from
    cost_fraction: float  # the backbone's FLOPs before it / the original model's
    flops: float  # FLOPs per sample leaving here (backbone and heads so far)
    threshold: float | None
    held_share: float | None  # share of held-out calibration samples leaving here (planned)
    share: float | None = None  # measured on the evaluation data
    accuracy: float | None = None  # top-1 % of those samples (labels), else agreement %


@dataclass
class Report:
    model: str
    output: str
    layers: list[LayerRow] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)  # stage -> median batch-1 ms
    throughput: dict[str, float] = field(default_factory=dict)  # stage -> samples/s, batch 64
    unknown_ops: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    container: dict[str, float] = field(default_factory=dict)  # coded symbols vs entropy
    passes: list[dict[str, Any]] = field(default_factory=list)  # what each pass did, per tensor
    search: dict[str, Any] = field(default_factory=dict)  # the budget search: curves, choices
    scored_output: str | None = None  # the output the scores measure
    metric: str | None = None  # metrics.Metric value
    units: str | None = None  # of the scores, the drop and the budget
    accuracy_drop: float | None = None  # first stage's score minus the last's, in `units`
    budget: float | None = None
    within_budget: bool | None = None
    exits: list[ExitRow] = field(default_factory=list)  # a model with early exits
    exit_criterion: str | None = None
    budget_unmet: list[str] = field(default_factory=list)  # passes no setting of which fits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def judge(self) -> None:
        """The drop from the first stage to the last (accuracy with labels, else agreement)
        and whether it is within the budget."""
        self.budget_unmet = [p["pass"] for p in self.passes if p.get("budget_met") is False]
        if self.budget_unmet:
            self.within_budget = False
        first, last = self.stages[0], self.stages[-1]
        if first.score is None or last.score is None:
            return
        self.accuracy_drop = first.score - last.score
        if self.budget is not None and not self.budget_unmet:
            self.within_budget = self.accuracy_drop <= self.budget + 1e-9


def pass_summary(report) -> dict[str, Any]:
    """A PassReport as plain data for the JSON report."""
    return {"pass": report.name, "modified": report.modified, "notes": list(report.notes),
            "per_tensor": report.per_tensor, "budget_met": report.budget_met}


@dataclass
class Evaluator:
    """Scores models on the eval set against the uncompressed model's outputs."""

    data: D.Dataset
    reference: np.ndarray
    metric: M.Metric

    def stage(self, name: str, size: int, base_size: int, run) -> StageRow:
        out = D.predict(run, self.data)
        labels, targets = self.data.labels, self.data.targets
        classes = self.metric in (M.Metric.TOP1, M.Metric.AGREEMENT)
        diff = np.abs(out.astype(np.float64) - self.reference.astype(np.float64))
        return StageRow(
            name, size, base_size / max(size, 1),
            score=M.score(self.metric, out, self.reference, labels, targets),
            accuracy=(M.score(M.Metric.TOP1, out, self.reference, labels)
                      if classes and labels is not None else None),
            agreement=M.score(M.Metric.AGREEMENT, out, self.reference) if classes else None,
            max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))


def layer_rows(model: onnx.ModelProto, stored_bytes: dict[str, int] | None = None,
               stored_codec: dict[str, str] | None = None,
               original: dict[str, int] | None = None,
               arrays: dict[str, np.ndarray] | None = None,
               feeds: dict[str, np.ndarray] | None = None) -> list[LayerRow]:
    """One row per weight-bearing layer of `model`.

    `stored_bytes`/`stored_codec` (from a container report) give each initializer's stored size;
    otherwise the in-file size is used. `original` maps layer name -> element count of the
    uncompressed weight, for bytes_before (default: the dense float32 size of the current weight).
    `arrays` holds the data of IN_MEMORY initializers (graph.to_light_model). FLOPs are per
    sample of `feeds` (its sequence length, say), if given.
    """
    graph = to_graph(model, arrays)
    flops = layer_flops(graph, dims_of(graph, feeds))
    rows, seen = [], set()
    for node in all_nodes(graph):  # early exits: the backbone sits in If branches, twice
        if node.op == XNOR_CONV and isinstance(node.inputs[IN_WEIGHT_BITS], gs.Constant):
            bits = node.inputs[IN_WEIGHT_BITS]
            if bits.name not in seen:  # the exact Sign(0) form shares one weight in two ops
                seen.add(bits.name)
                row = _xnor_row(node, bits, stored_bytes, stored_codec, original)
                rows.append(dataclasses.replace(row, flops=flops.get(node.name)))
            continue
        index = weight_index(node)
        stored = None if index is None else weight_sources(node, index)
        key = None if stored is None else tuple(c.name for c in stored if _is_float(c))
        if stored is None or key in seen:
            continue
        seen.add(key)
        dense, _ = resolve_weight(node, index)
        row = _row(node, dense, stored, stored_bytes, stored_codec, original)
        rows.append(dataclasses.replace(row, flops=flops.get(node.name)))
    return rows


def layer_flops(graph: gs.Graph, dims: dict[str, int] | None = None) -> dict[str, int]:
    """Node name -> FLOPs per sample; empty when shape inference cannot run on the model."""
    try:
        return {c.name: c.flops for c in graph_costs(graph, dims)}
    except (onnx.shape_inference.InferenceError, ValueError, KeyError, TypeError) as e:
        log.info("no FLOPs column: shape inference failed (%s)", e)
        return {}


def _is_float(c: gs.Constant) -> bool:
    """Float constants hold a layer's values; integer ones (indices, shapes) only place them."""
    return np.asarray(c.values).dtype.kind == "f"


def _row(node, dense, stored, stored_bytes, stored_codec, original) -> LayerRow:
    flat = dense.reshape(-1)
    nonzero = flat[flat != 0]
    distinct = len(np.unique(nonzero)) if nonzero.size else 0
    has_zero = nonzero.size < flat.size
    bits = (max(1, math.ceil(math.log2(distinct + has_zero))) if 0 < distinct <= 256 else None)
    after = sum((stored_bytes or {}).get(c.name, np.asarray(c.values).nbytes) for c in stored)
    if stored_codec:
        how = "+".join(sorted({stored_codec.get(c.name, "?")
                               for c in [c for c in stored if _is_float(c)] or stored}))
    else:
        how = "gather codebook" if len(stored) > 1 else str(dense.dtype)
    before = (original or {}).get(node.name, flat.size)
    return LayerRow(
        layer=node.name, op=node.op, shape=list(dense.shape), params=int(flat.size),
        sparsity=float(1 - nonzero.size / max(flat.size, 1)), bits=bits, distinct=distinct,
        bytes_before=int(before * 4), bytes_after=int(after), stored_as=how,
        binarized=node.op == "Conv" and flat.size > 0 and bool(np.all(np.abs(flat) == 1)))


def _xnor_row(node, bits: gs.Constant, stored_bytes, stored_codec, original) -> LayerRow:
    """An XnorConv's weight: M x C x KH x KW at 1 bit each (C from the float weight it
    replaced, else from the input's shape, else the packed width)."""
    packed = np.asarray(bits.values)
    kh, kw = (int(v) for v in node.attrs.get(ATTR_KERNEL_SHAPE, (1, 1)))
    before = (original or {}).get(node.name)
    x_shape = node.inputs[0].shape
    m = int(packed.shape[0])
    if before and before % (m * kh * kw) == 0:
        c = before // (m * kh * kw)
    elif x_shape is not None and len(x_shape) == 4 and isinstance(x_shape[1], int):
        c = x_shape[1]
    else:
        c = packed.shape[1] // (kh * kw * 8) * 64
    shape = [int(packed.shape[0]), c, kh, kw]
    params = int(np.prod(shape))
    words = words_per_tap(c)
    if packed.shape[1] != kh * kw * words * 8:
        shape, params = [int(packed.shape[0]), packed.shape[1] * 8], int(packed.size * 8)
    codec = (stored_codec or {}).get(bits.name, "packed bits")
    return LayerRow(
        layer=node.name, op=node.op, shape=shape, params=params, sparsity=0.0, bits=1, distinct=2,
        bytes_before=params * 4, bytes_after=int((stored_bytes or {}).get(bits.name, packed.nbytes)),
        stored_as=codec, binarized=True)


def original_weights(model: onnx.ModelProto) -> dict[str, int]:
    """layer name -> weight element count, for the bytes-before column.

    Plain initializers are counted from their shape, without loading their data.
    """
    graph = to_graph(model)
    out = {}
    for node in graph.nodes:
        index = weight_index(node)
        if index is None:
            continue
        size = weight_size(node, index)
        if size is not None:
            out[node.name] = size
    return out


def coding_summary(creport) -> dict[str, float]:
    """Entropy-coded symbols (Huffman or rANS streams) of a container against their empirical entropy (Shannon bound)."""
    rows = [t for t in creport.tensors if t.n_symbols and t.bits_per_symbol is not None]
    n = sum(t.n_symbols for t in rows)
    coded = sum(t.bits_per_symbol * t.n_symbols for t in rows)
    entropy = sum(t.entropy_bits or 0.0 for t in rows)
    return {"n_symbols": n, "coded_bits": coded, "entropy_bits": entropy,
            "bits_per_symbol": coded / n if n else 0.0,
            "entropy_bits_per_symbol": entropy / n if n else 0.0,
            "over_entropy": coded / entropy - 1 if entropy else 0.0,
            "container_bytes": creport.total_bytes, "graph_bytes": creport.graph_bytes}


def unknown_op_types(model: onnx.ModelProto, known: frozenset[str] = frozenset()) -> list[str]:
    return unknown_ops(to_graph(model), known)


# ----------------------------------------------------------------------------- early exits


def exit_table(model: onnx.ModelProto) -> ExitTable | None:
    """The exit table a model with early exits carries (onnxcompress.exits), else None."""
    return ExitTable.from_doc(model.graph.doc_string)


def exit_indices(session, data: D.Dataset, output: str, batch: int = 256) -> np.ndarray:
    """The exit each sample of `data` takes (the model's exit-index output)."""
    parts = []
    for start in range(0, len(data), batch):
        feeds = {k: v[start:start + batch] for k, v in data.feeds.items()}
        parts.append(np.asarray(session.run([output], feeds)[0]).reshape(-1))
    return np.concatenate(parts)


def exit_rows(table: ExitTable, taken: np.ndarray | None = None,
              outputs: np.ndarray | None = None, reference: np.ndarray | None = None,
              labels: np.ndarray | None = None) -> tuple[list[ExitRow], float]:
    """Per-exit rows and the expected FLOPs per sample: measured from `taken` (exit index per
    evaluation sample; `outputs` the model's scores there, scored against `labels`, else
    against the original model's `reference` scores), or planned from the table's held-out
    shares without them."""
    costs = table.path_flops()
    rows = [ExitRow(str(i), e.node, e.cost_fraction, e.flops, e.threshold, e.share)
            for i, e in enumerate(table.exits)]
    rows.append(ExitRow("end", "", 1.0, table.final_flops, None,
                        max(0.0, 1.0 - sum(e.share for e in table.exits))))
    if taken is None:
        return rows, float(sum(r.held_share * f for r, f in zip(rows, costs)))
    pred = M.top1(outputs) if outputs is not None else None
    target = labels if labels is not None else (M.top1(reference) if reference is not None
                                                else None)
    for i, row in enumerate(rows):
        mask = taken == i
        row.share = float(mask.mean())
        if pred is not None and target is not None and mask.any():
            row.accuracy = float(100 * (pred[mask] == target[mask]).mean())
    return rows, float(np.asarray(costs)[np.clip(taken, 0, len(costs) - 1)].mean())
