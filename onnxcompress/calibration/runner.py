"""Running graphs on ONNX Runtime over calibration data, one session per graph structure.

`GraphSession` exports a graph once with chosen tensors as outputs and chosen initializers
turned into inputs ("variable"): a search that changes weights feeds their current values on
each run instead of building a session per candidate. (ONNX Runtime computes every node
whatever the fetches, so a session never gets cheaper by asking for less.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..data import Dataset
from ..runtime import custom_ops


def ort_session(model: onnx.ModelProto, threads: int | None = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    serialized = model.SerializeToString()
    if custom_ops.uses_custom_domain(serialized):  # binarized layers, in any subgraph too
        custom_ops.add_to(so)
    return ort.InferenceSession(serialized, so, providers=["CPUExecutionProvider"])


def elem_type(tensor: gs.Tensor) -> int:
    dtype = tensor.dtype if tensor.dtype is not None else np.float32
    if isinstance(dtype, int):  # onnx-graphsurgeon may keep the TensorProto enum
        return dtype
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def structure_key(graph: gs.Graph) -> tuple:
    """Changes when nodes or their wiring change, not when constant values do."""
    return tuple((n.name, n.op, tuple(t.name for t in n.inputs), tuple(t.name for t in n.outputs))
                 for n in graph.nodes)


class GraphSession:
    """One ONNX Runtime session over `graph` returning `outputs` (default: the graph's own),
    with the initializers named in `variable` fed on every run (their current values in the
    graph, or in `values` when the session runs a copy of part of it, or `overrides`).
    Tensors named in `outputs` that are graph inputs are passed through from the feeds."""

    def __init__(self, graph: gs.Graph, outputs: Sequence[str] | None = None,
                 variable: Sequence[str] = (), threads: int | None = 1,
                 values: gs.Graph | None = None):
        tensors = graph.tensors()
        names = list(dict.fromkeys(outputs)) if outputs is not None else [
            t.name for t in graph.outputs]
        inputs = {t.name for t in graph.inputs}
        self.graph = graph
        self.values = values or graph  # whose current constants the variable inputs take
        self.outputs = names
        self.from_feeds = [n for n in names if n in inputs]
        self.fetch = [n for n in names if n not in inputs]
        self.variable = [n for n in dict.fromkeys(variable) if n in tensors]
        self.key = structure_key(graph)
        model = gs.export_onnx(graph, do_type_check=False)
        del model.graph.output[:]
        for name in self.fetch:
            t = tensors[name]  # a tensor of unknown type is left for ONNX Runtime to infer
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, elem_type(t), None)
                if t.dtype is not None else onnx.helper.make_empty_tensor_value_info(name))
        inits = {t.name: t for t in model.graph.initializer}
        for name in self.variable:
            t = inits[name]
            model.graph.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, t.dims))
        self.session = ort_session(model, threads) if self.fetch else None

    def current(self, overrides: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The variable initializers' values: `overrides`, else what the graph holds now."""
        if not self.variable:  # (tensors() walks the whole graph: not on every run for nothing)
            return {}
        tensors = self.values.tensors()
        out = {}
        for name in self.variable:
            value = (overrides or {}).get(name)
            out[name] = np.asarray(tensors[name].values if value is None else value)
        return out

    def run(self, feeds: Mapping[str, np.ndarray],
            overrides: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The outputs on one batch of feeds."""
        outs = self.session.run(self.fetch, {**feeds, **self.current(overrides)}) \
            if self.session else []
        return {**dict(zip(self.fetch, outs)), **{n: feeds[n] for n in self.from_feeds}}

    def batches(self, data: Dataset, overrides: Mapping[str, np.ndarray] | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
        """The outputs over all samples of `data`, one batch at a time."""
        values = self.current(overrides)
        for f in data.batches():
            outs = self.session.run(self.fetch, {**f, **values}) if self.session else []
            yield {**dict(zip(self.fetch, outs)), **{n: f[n] for n in self.from_feeds}}

    def means(self, data: Dataset, overrides: Mapping[str, np.ndarray] | None = None
              ) -> dict[str, np.ndarray]:
        """Mean over all samples (axis 0) of each output, in float64."""
        sums: dict[str, np.ndarray] = {}
        for captured in self.batches(data, overrides):
            for name, arr in captured.items():
                part = np.asarray(arr, dtype=np.float64).sum(axis=0)
                sums[name] = sums[name] + part if name in sums else part
        return {k: v / len(data) for k, v in sums.items()}

    def collect(self, data: Dataset) -> dict[str, np.ndarray]:
        """Every output over all samples, concatenated."""
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.outputs}
        for captured in self.batches(data):
            for name, arr in captured.items():
                parts[name].append(arr)
        return {k: np.concatenate(v) for k, v in parts.items()}


def run_graph(graph: gs.Graph, feeds: Mapping[str, np.ndarray] | Dataset, *,
              threads: int | None = 1) -> np.ndarray:
    """First output of `graph` on ONNX Runtime over all samples of `feeds`."""
    data = feeds if isinstance(feeds, Dataset) else Dataset(dict(feeds), None)
    first = graph.outputs[0].name
    return GraphSession(graph, [first], threads=threads).collect(data)[first]
