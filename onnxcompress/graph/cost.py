"""What each node costs: FLOPs and parameters per sample, from ONNX shape inference.

FLOPs count a multiply-add as two operations, as the papers do:

    Conv           2 * |Y| * (C_in / group) * prod(k)    (+ |Y| with a bias)
    ConvTranspose  2 * |X| * (C_out / group) * prod(k)
    Gemm, MatMul   2 * |Y| * K                            (+ |Y| with a bias)
    pooling        |Y| * prod(k);  global pooling, reductions: |X|
    Softmax        3 * |Y|;  LayerNormalization 5 * |Y|;  BatchNormalization 2 * |Y|
    elementwise    |Y|;  data movement (Reshape, Concat, Gather …): 0

XnorConv counts its multiply-adds like a Conv: they are binary (XOR/popcount, about a tenth of
a float MAC's time on AVX-512), so its FLOPs overstate its time. Shapes come from ONNX shape
inference with every symbolic dimension bound (`dims`, default 1: one sample); parameters are
the constant inputs of a node, through in-graph decoders (`weights.weight_sources`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import ops
from .convert import to_light_model, with_arrays
from .geometry import GeometryError, conv_geometry
from .weights import weight_sources

ELEMENTWISE_FLOPS = {"Softmax": 3, "LogSoftmax": 3, "LayerNormalization": 5,
                     "BatchNormalization": 2}
MOVEMENT = frozenset({"Reshape", "Flatten", "Transpose", "Concat", "Split", "Slice", "Gather",
                      "Shape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Expand",
                      "Constant", "ConstantOfShape", "Pad", "Range", "If", "Loop"})
REDUCTIONS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum",
                        "ReduceMax", "ReduceL2"})


@dataclass(frozen=True)
class NodeCost:
    name: str
    op: str
    flops: int
    params: int
    output_shape: tuple[int, ...] | None  # of the first output, None if inference failed


def infer_shapes(graph: gs.Graph, dims: Mapping[str, int] | None = None
                 ) -> dict[str, tuple[int, ...]]:
    """Tensor name -> concrete shape, by ONNX shape inference on `graph` with its inputs'
    symbolic dimensions bound to `dims` (name -> size; unnamed or unlisted ones: 1). Where
    inference stops (exporters compute shapes at run time: Shape -> Gather -> Reshape …),
    one run of ONNX Runtime on a sample of zeros of those dimensions measures the rest."""
    shapes = _inferred(graph, dims)
    unknown = [t.name for n in graph.nodes for t in n.outputs if t.name and t.name not in shapes]
    if unknown and all(n.domain in (None, "", "ai.onnx") for n in graph.nodes):
        shapes.update(_measured(graph, unknown, dims))
    return shapes


def _measured(graph: gs.Graph, names: list[str], dims: Mapping[str, int] | None
              ) -> dict[str, tuple[int, ...]]:
    """Shapes of `names` from one ONNX Runtime run on a zero sample (ORT's own errors:
    none measured)."""
    import onnxruntime as ort

    model, arrays = to_light_model(graph)
    model = with_arrays(model, arrays)
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    feeds = {}
    for t in graph.inputs:
        shape = [d if isinstance(d, int) else int((dims or {}).get(d, 1))
                 for d in (t.shape or [])]
        feeds[t.name] = np.zeros(shape, dtype=np.dtype(t.dtype) if t.dtype is not None
                                 else np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        values = sess.run(names, feeds)
    except Exception:  # noqa: BLE001 - a model ORT cannot run on zeros keeps inferred shapes
        return {}
    return {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(names, values)}


def _inferred(graph: gs.Graph, dims: Mapping[str, int] | None) -> dict[str, tuple[int, ...]]:
    model, _ = to_light_model(graph)
    dims = dict(dims or {})
    for value in model.graph.input:
        for d in value.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = int(dims.get(d.dim_param, 1))
    del model.graph.value_info[:]
    for value in model.graph.output:  # let inference fill the outputs from the inputs
        value.type.tensor_type.ClearField("shape")
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(1 + sum(n.domain == ops.DOMAIN for n in model.graph.node)):
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        shapes = _known_shapes(inferred)
        if not _fill_custom_ops(model, shapes):
            break
    return shapes


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    g = model.graph
    out = {}
    for v in (*g.input, *g.value_info, *g.output):
        t = v.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[v.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    for t in g.initializer:
        out[t.name] = tuple(int(d) for d in t.dims)
    return out


def _fill_custom_ops(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Give XnorConv outputs (no ONNX schema) their shapes as value_info; True if any was new."""
    added = False
    for node in model.graph.node:
        if node.op_type != ops.XNOR_CONV or node.output[0] in shapes:
            continue
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if x is None or w is None:
            continue
        attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
        kernel = attrs.get(ops.ATTR_KERNEL_SHAPE, [1, 1])
        pads = attrs.get(ops.ATTR_PADS, [0, 0, 0, 0])
        strides = attrs.get(ops.ATTR_STRIDES, [1, 1])
        dil = attrs.get(ops.ATTR_DILATIONS, [1, 1])
        hw = [(x[2 + i] + pads[i] + pads[2 + i] - dil[i] * (kernel[i] - 1) - 1) // strides[i] + 1
              for i in range(2)]
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(
            node.output[0], onnx.TensorProto.FLOAT, [x[0], w[0], *hw]))
        added = True
    return added


def dims_of(graph: gs.Graph, feeds: Mapping[str, np.ndarray] | None) -> dict[str, int]:
    """Symbolic input dimension -> its size in `feeds` (the batch axis: 1, costs are per
    sample): a sequence length, say, as the data has it."""
    dims: dict[str, int] = {}
    for t in graph.inputs:
        arr = (feeds or {}).get(t.name)
        for axis, d in enumerate(t.shape or []):
            if isinstance(d, str) and arr is not None and axis < arr.ndim:
                dims.setdefault(d, 1 if axis == 0 else int(arr.shape[axis]))
    return dims


def graph_costs(graph: gs.Graph, dims: Mapping[str, int] | None = None) -> list[NodeCost]:
    """The cost of every node of `graph`, in graph order (see the module docstring)."""
    shapes = infer_shapes(graph, dims)
    return [node_cost(node, shapes) for node in graph.nodes]


def node_cost(node: gs.Node, shapes: Mapping[str, Sequence[int]]) -> NodeCost:
    out = shapes.get(node.outputs[0].name) if node.outputs else None
    return NodeCost(node.name, node.op, _flops(node, shapes, out), _params(node, shapes),
                    tuple(out) if out is not None else None)


def _size(shape: Sequence[int] | None) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape is not None else 0


def _has_bias(node: gs.Node) -> bool:
    return len(node.inputs) > 2 and node.inputs[2] is not None and bool(node.inputs[2].name)


def _flops(node: gs.Node, shapes: Mapping[str, Sequence[int]], out: Sequence[int] | None) -> int:
    op = node.op
    x = shapes.get(node.inputs[0].name) if node.inputs and node.inputs[0].name else None
    if op in MOVEMENT or out is None:
        return 0
    y = _size(out)
    if op in ("Conv", ops.XNOR_CONV) and x is not None:
        if op == ops.XNOR_CONV:
            w = shapes.get(node.inputs[1].name)
            kernel = node.attrs.get(ops.ATTR_KERNEL_SHAPE, (1, 1))
            fan_in = x[1] * int(np.prod(kernel)) if w is not None else 0
        else:
            w = shapes.get(node.inputs[1].name)
            group = int(node.attrs.get("group", 1))
            fan_in = int(np.prod(w[1:])) if w is not None else x[1] // group
        return 2 * y * fan_in + (y if _has_bias(node) else 0)
    if op == "ConvTranspose" and x is not None:
        w = shapes.get(node.inputs[1].name)  # (C_in, C_out / group, *k)
        return 2 * _size(x) * int(np.prod(w[1:])) if w is not None else 0
    if op in ("Gemm", "MatMul") and x is not None:
        trans_a = op == "Gemm" and node.attrs.get("transA", 0)
        k = x[-2] if trans_a else x[-1]
        return 2 * y * int(k) + (y if _has_bias(node) else 0)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        try:
            return y * int(np.prod(conv_geometry(node).kernel))
        except GeometryError:
            return y
    if op in REDUCTIONS:
        return _size(x)
    return ELEMENTWISE_FLOPS.get(op, 1) * y


def _params(node: gs.Node, shapes: Mapping[str, Sequence[int]]) -> int:
    """Elements of the node's float constant inputs; a weight decoded in-graph (codebook
    Gather …) counts as its dense size."""
    total = 0
    for i, t in enumerate(node.inputs):
        if t is None or not t.name or isinstance(t, gs.Variable) and not t.inputs:
            continue
        if isinstance(t, gs.Constant):
            arr = np.asarray(t.values)
            total += int(arr.size) if arr.dtype.kind == "f" else 0
        elif weight_sources(node, i) is not None and _is_float(t):
            total += _size(shapes.get(t.name))
    return total


def _is_float(t: gs.Tensor) -> bool:
    try:
        return np.dtype(t.dtype).kind == "f"
    except TypeError:
        return t.dtype in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
