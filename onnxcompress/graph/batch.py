"""Free a model's batch dimension: graphs exported for one batch size run on any.

Old exporters fix the batch size in the graph: the input is declared (1, 3, 224, 224) and a
Reshape before the classifier holds the constant shape (1, 9216). A pass that runs the rest of
a network on a subset of the batch (early exit) needs the batch free: the inputs' and outputs'
first dimension becomes symbolic, and a constant Reshape shape whose first entry is the fixed
batch, on a tensor that carries the batch, takes -1 (or 0, "copy", when it has a -1 already)
there. Shape inference at two batch sizes then checks that the output follows the input.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .cost import infer_shapes

BATCH = "N"


def free_batch(graph: gs.Graph, where: str) -> list[str]:
    """Make the batch dimension of `graph` symbolic, in place; notes on what changed."""
    fixed = {t.shape[0] for t in graph.inputs if t.shape and isinstance(t.shape[0], int)}
    notes: list[str] = []
    if fixed:
        batch = fixed.pop()
        for t in (*graph.inputs, *graph.outputs):
            if t.shape and t.shape[0] == batch:
                t.shape = [BATCH, *t.shape[1:]]
        carrying = _batch_carrying(graph)
        freed: dict[str, gs.Constant] = {}  # a shape constant shared by several Reshapes
        for node in graph.nodes:
            if node.op == "Reshape" and node.inputs[0].name in carrying:
                changed = _free_reshape(node, batch, freed)
                if changed:
                    notes.append(f"Reshape '{node.name}': shape {changed}")
        for t in graph.tensors().values():  # stale value_info with the fixed batch
            if isinstance(t, gs.Variable) and t not in (*graph.inputs, *graph.outputs):
                t.shape = None
        notes.insert(0, f"batch size {batch} fixed in the graph made symbolic "
                        f"({len(notes)} Reshape shape(s) changed)")
    _check(graph, where)
    return notes


def _batch_carrying(graph: gs.Graph) -> set[str]:
    """Tensors computed from a graph input (so they carry its batch)."""
    seen = {t.name for t in graph.inputs}
    for node in graph.nodes:  # graph order is topological
        if node.op != "Shape" and any(t is not None and t.name in seen for t in node.inputs):
            seen.update(t.name for t in node.outputs)
    return seen


def _free_reshape(node: gs.Node, batch: int, freed: dict[str, gs.Constant]) -> str:
    shape = node.inputs[1] if len(node.inputs) > 1 else None
    if isinstance(shape, gs.Constant) and shape.name in freed:
        node.inputs[1] = freed[shape.name]
        return f"{np.asarray(shape.values).tolist()} -> {np.asarray(freed[shape.name].values).tolist()}"
    if not isinstance(shape, gs.Constant):
        return ""
    values = np.asarray(shape.values).astype(np.int64)
    if values.ndim != 1 or not values.size or values[0] != batch or batch in (0, -1):
        return ""
    new = values.copy()
    new[0] = -1 if -1 not in values[1:] else 0
    if new[0] == 0 and node.attrs.get("allowzero", 0):
        return ""
    freed[shape.name] = node.inputs[1] = gs.Constant(f"{shape.name}_any_batch", new)
    return f"{values.tolist()} -> {new.tolist()}"


def _check(graph: gs.Graph, where: str) -> None:
    """The output's batch must follow the input's (shape inference at batch 3)."""
    names = {t.shape[0] for t in graph.inputs if t.shape and isinstance(t.shape[0], str)}
    shapes = infer_shapes(graph, {name: 3 for name in names})
    for t in graph.outputs:
        got = shapes.get(t.name)
        if got is not None and got[0] != 3:
            raise UnsupportedModelError(
                f"{where}: the batch size is fixed inside the graph (output '{t.name}' keeps "
                f"batch {got[0]} for an input batch of 3); early exit needs a model that runs "
                "on any batch size")
