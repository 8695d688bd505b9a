"""Between ONNX protos and onnx_graphsurgeon graphs, without copying large weights.

Large models travel as a proto whose big initializers carry no data (IN_MEMORY, see
container/protos.py) beside a dict of numpy arrays: one copy of the weights, not two.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..container.protos import mark_in_memory, unmark
from .topology import unique_names


def to_graph(model: onnx.ModelProto, arrays: dict[str, np.ndarray] | None = None) -> gs.Graph:
    """The graph of `model`; constants named in `arrays` take those arrays as their values
    (the initializers model.normalize_file left without data)."""
    graph = gs.import_onnx(model)
    if arrays:
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant) and t.name in arrays:
                t.values = arrays[t.name]
                t.data_location = None  # exported inline again
    for node, name in zip(graph.nodes, unique_names([(n.name, n.op) for n in graph.nodes])):
        node.name = name
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


def with_arrays(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with the data of its IN_MEMORY initializers put back inline (in place)."""
    for t in model.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(onnx.numpy_helper.from_array(arrays[t.name], t.name))
    return model
