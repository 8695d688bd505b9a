"""Which input of which op is a compressible weight, and how a weight is laid out.

The table WEIGHT_INPUTS is the single place that says where weights live (TF-MOT's lesson: one
data table, not scattered `if op_type == ...`). A weight may also be decoded in-graph from
stored constants (a codebook `Gather`, a `Reshape` …): `weight_sources` finds them and
`resolve_weight` evaluates the dense value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

# op type -> (index of the weight input, layer kind used for per-kind defaults). A Gather is an
# embedding table when it looks its constant table up by indices computed at run time (a
# Gather of constants by constants is an in-graph decoder, not a layer).
WEIGHT_INPUTS: dict[str, tuple[int, str]] = {
    "Conv": (1, "conv"),
    "ConvTranspose": (1, "conv"),
    "Gemm": (1, "fc"),
    "MatMul": (1, "fc"),
    "Gather": (0, "embedding"),
}

# ops through which a stored weight may be decoded in-graph before it reaches its layer
DECODE_OPS = frozenset({"Gather", "Reshape", "Identity", "Cast", "Mul", "Add",
                        "DequantizeLinear", "Unsqueeze", "Transpose"})


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
    def name(self) -> str:
        return self.tensor.name

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

    @property
    def out_channels(self) -> int:
        """Output channels (Conv) or units (Gemm, MatMul; an embedding's width)."""
        node, shape = self.node, self.values.shape
        if node.op == "Gemm":
            return shape[0] if node.attrs.get("transB", 0) else shape[1]
        return shape[-1] if node.op == "MatMul" else shape[0]

    @property
    def gain(self) -> float:
        """The factor the layer applies to W x (Gemm's alpha)."""
        return float(self.node.attrs.get("alpha", 1.0)) if self.node.op == "Gemm" else 1.0

    def to_rows(self, arr: np.ndarray) -> np.ndarray:
        """An array in the weight's layout as (out channels, fan-in) rows."""
        if self.node.op == "Conv":
            return arr.reshape(arr.shape[0], -1)
        if self.node.op == "Gemm" and self.node.attrs.get("transB", 0):
            return arr
        return arr.T

    def from_rows(self, rows: np.ndarray) -> np.ndarray:
        """Inverse of `to_rows`."""
        if self.node.op == "Conv":
            return rows.reshape(self.values.shape)
        if self.node.op == "Gemm" and self.node.attrs.get("transB", 0):
            return rows
        return rows.T


def weight_of(node: gs.Node) -> tuple[Weight | None, str]:
    """The node's compressible weight, or None and the reason why it has none."""
    if node.op not in WEIGHT_INPUTS:
        return None, f"{node.op} has no weight input"
    index, kind = WEIGHT_INPUTS[node.op]
    if node.op == "Gather" and not _is_lookup(node):
        return None, f"Gather '{node.name}' decodes constants; it is not an embedding lookup"
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


def _is_lookup(node: gs.Node) -> bool:
    """A Gather whose indices come from the inputs (an embedding lookup)."""
    return len(node.inputs) == 2 and weight_sources(node, 1) is None


def weight_index(node: gs.Node) -> int | None:
    """Which input of a weight-bearing op holds its (possibly in-graph decoded) weight."""
    if node.op not in WEIGHT_INPUTS or node.op == "Gather" and not _is_lookup(node):
        return None
    index = WEIGHT_INPUTS[node.op][0]
    if node.op == "MatMul" and not _is_const_chain(node, 1) and _is_const_chain(node, 0):
        index = 0
    return index if len(node.inputs) > index else None


def _is_const_chain(node: gs.Node, index: int) -> bool:
    return len(node.inputs) > index and weight_sources(node, index) is not None


def weight_sources(node: gs.Node, index: int) -> list[gs.Constant] | None:
    """The stored constants a layer's weight input is decoded from, without evaluating it;
    None when the input is not a constant function of initializers."""
    tensor = node.inputs[index]
    if isinstance(tensor, gs.Constant):
        return [tensor]
    if not tensor.inputs or tensor.inputs[0].op not in DECODE_OPS:
        return None
    producer = tensor.inputs[0]
    parts = [weight_sources(producer, i) for i in range(len(producer.inputs))]
    return None if any(p is None for p in parts) else [c for p in parts for c in p]


def resolve_weight(node: gs.Node, index: int) -> tuple[np.ndarray, list[gs.Constant]] | None:
    """The dense value of a layer's weight input and the stored constants it is decoded from
    (plain initializers and in-graph decoders: Gather(codebook, indices) → Reshape …)."""
    tensor = node.inputs[index]
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values), [tensor]
    if not tensor.inputs or tensor.inputs[0].op not in DECODE_OPS:
        return None
    producer = tensor.inputs[0]
    parts = [resolve_weight(producer, i) for i in range(len(producer.inputs))]
    if any(p is None for p in parts):
        return None
    vals = [p[0] for p in parts]
    stored = [c for p in parts for c in p[1]]
    return _eval_decoder(producer, vals), stored


def weight_size(node: gs.Node, index: int) -> int | None:
    """Elements of a layer's weight input, from the shapes of the constants it is decoded from
    (their data is never read: it may not even be loaded)."""
    tensor = node.inputs[index]
    if isinstance(tensor, gs.Constant):
        return int(np.prod(tensor.shape, dtype=np.int64))
    if not tensor.inputs or tensor.inputs[0].op not in DECODE_OPS:
        return None
    producer = tensor.inputs[0]
    if producer.op == "Gather":  # codebook[indices]: as many as the indices
        return weight_size(producer, 1)
    if producer.op in ("Mul", "Add"):
        sizes = [weight_size(producer, i) for i in range(len(producer.inputs))]
        return None if None in sizes else max(sizes)
    return weight_size(producer, 0)


def _eval_decoder(node: gs.Node, vals: list[np.ndarray]) -> np.ndarray:
    op = node.op
    if op == "Gather":
        return np.take(vals[0], vals[1].astype(np.int64), axis=int(node.attrs.get("axis", 0)))
    if op == "Reshape":
        shape = [d if d != 0 else vals[0].shape[i] for i, d in enumerate(vals[1].tolist())]
        return vals[0].reshape(shape)
    if op == "Unsqueeze":
        return np.expand_dims(vals[0], tuple(int(a) for a in vals[1]))
    if op == "Cast":
        to = onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"])
        return vals[0].astype(to)
    if op == "Mul":
        return vals[0] * vals[1]
    if op == "Add":
        return vals[0] + vals[1]
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return np.transpose(vals[0], None if perm is None else list(perm))
    if op == "DequantizeLinear":
        zp = vals[2] if len(vals) > 2 else 0
        return (vals[0].astype(np.float32) - zp) * vals[1]
    return vals[0]  # Identity
