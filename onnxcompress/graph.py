"""Helpers over onnx_graphsurgeon graphs: which input of which op is a compressible weight.

The table WEIGHT_INPUTS is the single place that says where weights live (TF-MOT's lesson: one
data table, not scattered `if op_type == ...`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .container.protos import mark_in_memory, unmark
from .errors import BadInputError

# op type -> (index of the weight input, layer kind used for per-kind defaults)
WEIGHT_INPUTS: dict[str, tuple[int, str]] = {
    "Conv": (1, "conv"),
    "ConvTranspose": (1, "conv"),
    "Gemm": (1, "fc"),
    "MatMul": (1, "fc"),
}

# ops the passes understand well enough to leave alone safely
PASSTHROUGH_OPS = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Clip", "Add", "Mul", "Sub",
    "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
    "Concat", "Dropout", "Identity", "BatchNormalization", "Transpose", "Gather", "Shape",
    "Unsqueeze", "Squeeze", "Cast", "Pad", "LRN", "Sign", "Constant", "ConstantOfShape",
    "Split", "Slice", "ReduceMean", "Sqrt", "Pow", "Erf", "Gelu", "Sum", "Max", "Min",
    "HardSigmoid", "HardSwish", "Elu", "Selu", "PRelu", "Neg", "Abs", "Exp", "Log",
    "GreaterOrEqual", "Where", "XnorConv",  # the binarize pass's portable and native forms
}


@dataclass
class Weight:
    """One compressible weight: the op that uses it, which input, and the constant itself."""

    node: gs.Node
    index: int
    tensor: gs.Constant
    kind: str  # "conv" | "fc"

    @property
    def layer(self) -> str:
        return self.node.name or self.tensor.name

    @property
    def values(self) -> np.ndarray:
        return np.asarray(self.tensor.values)

    def frozen_values(self) -> np.ndarray:
        """The current values, made read-only: a pass keeps them as its originals without a
        copy (at VGG-19 scale a copy of every weight is 575 MB); setting new values never
        writes into them."""
        arr = self.values
        arr.flags.writeable = False
        return arr

    def set_values(self, arr: np.ndarray) -> None:
        self.tensor.values = np.ascontiguousarray(arr.astype(self.values.dtype, copy=False))


def to_graph(model: onnx.ModelProto, arrays: dict[str, np.ndarray] | None = None) -> gs.Graph:
    """The graph of `model`; constants named in `arrays` take those arrays as their values
    (the initializers model.normalize_file left without data)."""
    graph = gs.import_onnx(model)
    if arrays:
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant) and t.name in arrays:
                t.values = arrays[t.name]
                t.data_location = None  # exported inline again
    _name_unnamed_nodes(graph)
    return graph


def to_model(graph: gs.Graph, like: onnx.ModelProto | None = None) -> onnx.ModelProto:
    graph.cleanup().toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    if like is not None:
        model.ir_version = like.ir_version
        model.producer_name = like.producer_name or "onnxcompress"
        del model.opset_import[:]
        model.opset_import.extend(like.opset_import)
        # custom domains a pass introduced (binarize: ai.onnx.contrib) need an opset import too
        have = {o.domain for o in model.opset_import}
        used = {n.domain for n in model.graph.node} - {"", "ai.onnx"} - have
        model.opset_import.extend(onnx.helper.make_opsetid(d, 1) for d in sorted(used))
        model.metadata_props.extend(like.metadata_props)
    return model


def to_light_model(graph: gs.Graph, like: onnx.ModelProto | None = None, min_bytes: int = 1024
                   ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """`to_model` without copying the large constants into the proto: they come back as the
    arrays the graph holds (no copy), and their initializers carry no data (IN_MEMORY). A
    proto of every weight costs as much memory as the weights, until the whole proto is freed.
    """
    consts = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    arrays = {c.name: np.asarray(c.values) for c in consts
              if isinstance(c.values, np.ndarray) and c.values.dtype.kind in "biuf"
              and c.values.nbytes >= min_bytes}
    held = [c for c in consts if c.name in arrays]
    try:
        for c in held:  # placeholders: same type, no data
            c.values = np.empty((0,), arrays[c.name].dtype)
        model = to_model(graph, like)
    finally:
        for c in held:
            c.values = arrays[c.name]
    for t in model.graph.initializer:
        if t.name in arrays:
            del t.dims[:]
            t.dims.extend(arrays[t.name].shape)
            mark_in_memory(t)
    return model, arrays


def exported_size(graph: gs.Graph, like: onnx.ModelProto | None = None) -> int:
    """`to_model(graph, like).ByteSize()`, computed from a light export (no copy of the weights)."""
    model, arrays = to_light_model(graph, like)
    grow = 0
    for t in model.graph.initializer:
        if t.name not in arrays:
            continue
        light = t.ByteSize()
        plain = onnx.TensorProto()
        plain.CopyFrom(t)
        unmark(plain)
        n = arrays[t.name].nbytes
        full = plain.ByteSize() + 1 + _varint_len(n) + n  # + raw_data (field 9: one tag byte)
        grow += _varint_len(full) + full - _varint_len(light) - light
    g = model.graph.ByteSize()
    return model.ByteSize() + grow + _varint_len(g + grow) - _varint_len(g)


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _name_unnamed_nodes(graph: gs.Graph) -> None:
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}_{i}"
        seen.add(node.name)


def weight_of(node: gs.Node) -> tuple[Weight | None, str]:
    """The node's compressible weight, or None and the reason why it has none."""
    if node.op not in WEIGHT_INPUTS:
        return None, f"{node.op} has no weight input"
    index, kind = WEIGHT_INPUTS[node.op]
    if node.op == "MatMul" and not isinstance(node.inputs[1], gs.Constant) and isinstance(
            node.inputs[0], gs.Constant):
        index = 0
    if len(node.inputs) <= index:
        return None, f"{node.op} '{node.name}' has no input {index}"
    t = node.inputs[index]
    if not isinstance(t, gs.Constant):
        src = t.inputs[0].name if t.inputs else "a graph input"
        return None, f"expected a constant weight for {node.op} '{node.name}', got the output of {src}"
    if not np.issubdtype(np.asarray(t.values).dtype, np.floating):
        return None, f"weight '{t.name}' of {node.op} '{node.name}' is not floating point"
    return Weight(node, index, t, kind), ""


def iter_weights(graph: gs.Graph) -> list[Weight]:
    """Every compressible weight in the graph, in topological order (shared tensors once)."""
    out, seen = [], set()
    for node in graph.nodes:
        w, _ = weight_of(node)
        if w is not None and w.tensor.name not in seen:
            seen.add(w.tensor.name)
            out.append(w)
    return out


def unknown_ops(graph: gs.Graph) -> list[str]:
    """Op types no pass knows; they are left untouched and listed in the report."""
    return sorted({n.op for n in graph.nodes} - PASSTHROUGH_OPS - set(WEIGHT_INPUTS))


@dataclass(frozen=True)
class Scope:
    """Which layers a step touches: fnmatch patterns on layer or weight names, op types, exclusions.

    An include entry that matches nothing raises, so typos in recipes are caught.
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()

    def select(self, weights: Iterable[Weight]) -> list[Weight]:
        weights = list(weights)
        names = lambda w: (w.layer, w.tensor.name)
        for pat in (*self.include, *self.exclude):
            if not any(fnmatch.fnmatchcase(n, pat) for w in weights for n in names(w)):
                valid = ", ".join(w.layer for w in weights) or "(none)"
                raise BadInputError(f"layer pattern '{pat}' matches no layer; layers are: {valid}")
        return [
            w for w in weights
            if any(fnmatch.fnmatchcase(n, p) for p in self.include for n in names(w))
            and not any(fnmatch.fnmatchcase(n, p) for p in self.exclude for n in names(w))
            and (not self.op_types or w.node.op in self.op_types)
        ]
