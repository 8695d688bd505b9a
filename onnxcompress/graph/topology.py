"""Who produces and consumes what, fresh names, and the op types the passes know."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import onnx_graphsurgeon as gs

from .. import ops

# ops every pass understands well enough to leave alone safely (a pass that emits others
# declares them: registry.known_ops)
SAFE_OPS = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Clip", "Add", "Mul", "Sub",
    "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
    "Concat", "Dropout", "Identity", "BatchNormalization", "Transpose", "Gather", "Shape",
    "Unsqueeze", "Squeeze", "Cast", "Pad", "LRN", "Sign", "Constant", "ConstantOfShape",
    "Split", "Slice", "ReduceMean", "Sqrt", "Pow", "Erf", "Gelu", "Sum", "Max", "Min",
    "HardSigmoid", "HardSwish", "Elu", "Selu", "PRelu", "Neg", "Abs", "Exp", "Log",
    "GreaterOrEqual", "Where", "LayerNormalization", "Expand", "Equal", "Range", "ReduceSum",
    "ReduceMax", "ReduceL2", "LpNormalization",
    "Conv", "ConvTranspose", "Gemm", "MatMul", ops.XNOR_CONV,
})


def unique_names(nodes: Sequence[tuple[str, str]]) -> list[str]:
    """Stable unique names for (name, op_type) pairs in graph order: an empty or repeated name
    becomes `<op>_<index>`, so reports and recipes can refer to every layer."""
    seen: set[str] = set()
    out = []
    for i, (name, op) in enumerate(nodes):
        if not name or name in seen:
            name = f"{op}_{i}"
        seen.add(name)
        out.append(name)
    return out


def fresh_name(graph: gs.Graph, base: str) -> str:
    """`base`, or `base_1`, `base_2` … : a name no tensor or node of `graph` has yet."""
    names = set(graph.tensors()) | {n.name for n in graph.nodes}
    name, i = base, 1
    while name in names:
        name, i = f"{base}_{i}", i + 1
    return name


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def downstream_nodes(node: gs.Node) -> set[str]:
    """Names of the nodes that depend on `node`'s outputs (itself excluded)."""
    seen: set[str] = set()
    stack = list(node.outputs)
    while stack:
        for consumer in stack.pop().outputs:
            if consumer.name not in seen:
                seen.add(consumer.name)
                stack.extend(consumer.outputs)
    return seen


def all_nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    """Every node of `graph` and of the subgraphs its nodes hold (If branches, Loop bodies),
    depth first in graph order."""
    for node in graph.nodes:
        yield node
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from all_nodes(value)


def find_node(graph: gs.Graph, name: str) -> gs.Node:
    node = next((n for n in graph.nodes if n.name == name), None)
    if node is None:
        raise KeyError(f"no node named '{name}'")
    return node


def unknown_ops(graph: gs.Graph, known: Iterable[str] = ()) -> list[str]:
    """Op types no pass knows; they are left untouched and listed in the report."""
    return sorted({n.op for n in graph.nodes} - SAFE_OPS - set(known))
