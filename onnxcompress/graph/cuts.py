"""Where a classifier can be cut: its class-score output, and the tensors that cut its graph.

A tensor T is a *cut* when everything the rest of the graph needs from the part before T is T
itself (besides constants): walking the nodes in topological order, the set of live tensors
(produced so far and read later, or a graph output) is exactly {T} right after T's producer.
Then the rest of the network is a function of T alone and can run on any subset of the batch:
an early exit may branch there (BranchyNet's side branches sit at such points: after a block's
activation, a pooling, a residual Add or a Concat; never inside a residual pair, where the
shortcut keeps a second tensor live).

Tensors computed from constants only (in-graph weight decoders) count as constants. The
classifier's output must be a score vector per sample, (N, K) or (N, K, 1 …), reached from its
*logits* through shape-only ops and at most one Softmax/LogSoftmax (the *tail*).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .cost import NodeCost

TAIL_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
                      "Softmax", "LogSoftmax"})
ACTIVATIONS = frozenset({"Softmax", "LogSoftmax"})
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})
RESIDUAL = frozenset({"Add", "Sum"})


@dataclass(frozen=True)
class Classifier:
    """The class-score output of a model and the logits it comes from."""

    output: str  # graph output name
    logits: str  # the tensor before the tail
    classes: int  # K
    out_dims: tuple[int, ...]  # the output's per-sample dims: (K,) or (K, 1, 1) …
    activation: str  # "", "Softmax" or "LogSoftmax": what the tail applies to the logits
    logits_node: int  # position of the logits' producer in graph order


@dataclass(frozen=True)
class Cut:
    """A tensor that cuts the graph, with what runs before it."""

    node: str  # its producer
    op: str
    tensor: str
    dims: tuple[int, ...]  # per sample (batch excluded)
    position: int  # the producer's index in graph order
    flops_before: int  # FLOPs per sample of the nodes up to and including the producer
    fraction: float  # flops_before / the model's FLOPs
    kind: str  # "after a residual Add", "pooling" …


def constant_tensors(graph: gs.Graph) -> set[str]:
    """Names of the constants and of every tensor computed from constants only."""
    const = {name for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    for node in graph.nodes:
        ins = [t for t in node.inputs if t is not None and t.name]
        if node.op == "Constant" or (ins and all(t.name in const for t in ins)):
            const.update(t.name for t in node.outputs)
    return const


def find_classifier(graph: gs.Graph, shapes: Mapping[str, Sequence[int]], where: str
                    ) -> Classifier:
    """The model's class-score output, or UnsupportedModelError saying what was found."""
    outs = [t.name for t in graph.outputs]
    if len(outs) != 1:
        raise UnsupportedModelError(
            f"{where}: early exit needs a classifier with one class-score output; the model "
            f"has {len(outs)} outputs ({', '.join(outs)})")
    out = graph.outputs[0]
    shape = shapes.get(out.name)
    if shape is None and out.shape and all(isinstance(d, int) for d in out.shape[1:]):
        shape = (1, *out.shape[1:])  # inference could not follow it: as the model declares it
    dims = tuple(shape[1:]) if shape is not None else None
    if (not _is_float(out) or dims is None or not dims or dims[0] < 2
            or any(d != 1 for d in dims[1:])):
        found = "unknown shape" if shape is None else f"shape {_fmt(shape)} of {out.dtype}"
        raise UnsupportedModelError(
            f"{where}: early exit needs a classifier (a class-score vector per sample, "
            f"(N, K) or (N, K, 1, 1)); output '{out.name}' has {found}")
    positions = {id(n): i for i, n in enumerate(graph.nodes)}
    tensor, activation = out, ""
    while len(tensor.inputs) == 1 and tensor.inputs[0].op in TAIL_OPS:
        node = tensor.inputs[0]
        if node.op in ACTIVATIONS:
            if activation:
                break
            activation = node.op
        tensor = node.inputs[0]
    if not tensor.inputs or int(np.prod(shapes.get(tensor.name, (0,))[1:])) != dims[0]:
        raise UnsupportedModelError(
            f"{where}: early exit needs a classifier; the scores '{out.name}' do not come from "
            f"a tensor of {dims[0]} logits per sample (found '{tensor.name}')")
    return Classifier(out.name, tensor.name, dims[0], dims, activation,
                      positions[id(tensor.inputs[0])])


def cut_points(graph: gs.Graph, shapes: Mapping[str, Sequence[int]], costs: Sequence[NodeCost],
               classifier: Classifier) -> tuple[list[Cut], dict[str, str]]:
    """(the cuts before the logits, in graph order; node name -> why it is not a cut)."""
    const = constant_tensors(graph)
    last_use = _last_uses(graph, const)
    total = max(sum(c.flops for c in costs), 1)
    live: dict[str, str] = {t.name: "the graph input" for t in graph.inputs}
    cuts, why = [], {}
    done = 0
    for i, (node, cost) in enumerate(zip(graph.nodes, costs)):
        done += cost.flops
        for t in node.inputs:
            if t is not None and t.name in live and last_use.get(t.name, -1) <= i:
                del live[t.name]
        for t in node.outputs:
            if t.name not in const and last_use.get(t.name, -1) > i:
                live[t.name] = node.name
        if all(t.name in const for t in node.outputs):
            why[node.name] = "it computes constants only"
            continue
        if i >= classifier.logits_node:
            why[node.name] = f"it is at or after the classifier's logits '{classifier.logits}'"
            continue
        reason = _not_a_cut(node, live, shapes)
        if reason:
            why[node.name] = reason
            continue
        t = node.outputs[0]
        cuts.append(Cut(node.name, node.op, t.name, tuple(int(d) for d in shapes[t.name][1:]), i,
                        done, done / total, _kind(node)))
    return cuts, why


def spread(cuts: list[Cut], limit: int) -> list[Cut]:
    """At most `limit` cuts spread over the cost range. Of cuts that cost the same (within 1%
    of the model) two are kept: the last, which has seen the most, and the last of the
    largest (before a pooling: a finer map for an exit head to read)."""
    groups: list[list[Cut]] = []
    for c in cuts:
        if groups and c.fraction - groups[-1][0].fraction < 0.01:
            groups[-1].append(c)
        else:
            groups.append([c])
    kept = []
    for group in groups:
        size = max(int(np.prod(c.dims)) for c in group)
        largest = [c for c in group if int(np.prod(c.dims)) == size][-1]
        kept += [largest] if largest is group[-1] else [largest, group[-1]]
    if len(kept) <= limit:
        return kept
    targets = np.linspace(kept[0].fraction, kept[-1].fraction, limit)
    picked = {min(range(len(kept)), key=lambda i: abs(kept[i].fraction - t)) for t in targets}
    return [kept[i] for i in sorted(picked)]


def _last_uses(graph: gs.Graph, const: set[str]) -> dict[str, float]:
    """Tensor -> index of the last node reading it (inf for graph outputs); nodes holding
    subgraphs read the outer tensors their subgraphs use."""
    last: dict[str, float] = {}
    for i, node in enumerate(graph.nodes):
        for t in _reads(node):
            if t.name and t.name not in const:
                last[t.name] = i
    for t in graph.outputs:
        last[t.name] = float("inf")
    return last


def _reads(node: gs.Node) -> list[gs.Tensor]:
    reads = [t for t in node.inputs if t is not None]
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            inner = {t.name for n in value.nodes for t in n.outputs}
            reads += [t for n in value.nodes for t in _reads(n) if t.name not in inner]
    return reads


def _not_a_cut(node: gs.Node, live: Mapping[str, str], shapes) -> str:
    out = node.outputs[0]
    others = [f"'{t}' (from '{p}')" for t, p in live.items() if t != out.name]
    if out.name not in live:
        return "its output is not read by the rest of the graph"
    if others:
        return f"the rest of the graph also reads {', '.join(others[:2])}" + (
            " (inside a residual pair or a parallel branch)" if node.op not in RESIDUAL else "")
    shape = shapes.get(out.name)
    if shape is None or len(shape) < 2 or not _is_float(out):
        found = "unknown shape" if shape is None else f"shape {_fmt(shape)}"
        return f"its output '{out.name}' is not a float batch of features ({found})"
    return ""


def _kind(node: gs.Node) -> str:
    """What the exit comes after, for the report."""
    if node.op in POOLS:
        return "pooling"
    if node.op in RESIDUAL:
        return "residual Add"
    if node.op == "Concat":
        return "Concat"
    src = node.inputs[0].inputs[0] if node.inputs and node.inputs[0].inputs else None
    if src is not None and src.op in RESIDUAL and sum(
            isinstance(t, gs.Variable) for t in src.inputs) >= 2:
        return f"{node.op} after a residual Add"
    if src is not None and src.op == "Concat":
        return f"{node.op} after a Concat"
    return node.op


def _is_float(t: gs.Tensor) -> bool:
    try:
        return np.dtype(t.dtype).kind == "f"
    except TypeError:
        return t.dtype in (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
