"""Calibration statistics and layer-wise bias correction shared by the prune and cluster passes.

Statistics collection is separate from the algorithms that use it (NNCF's lesson):

- `Probe` runs a graph on ONNX Runtime with chosen intermediate tensors added as outputs and
  returns their means over the calibration samples; chosen initializers (the biases being
  corrected) become overridable inputs, so one session serves a whole correction sweep.
- `layer_stat` turns a layer's mean input into the statistic M of kernels/bias.py, and
  `output_mean(w, W, M)` gives the layer's per-channel mean output for any weight W.

Bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2, empirical variant):
for each perturbed layer l, in topological order,

    b_l <- b_l + (E[W_l x_l] - E[W'_l x'_l]) / beta

where x_l is the layer input in the original model and x'_l its input in the compressed model
with every earlier layer already corrected, so each correction also absorbs the mean error
propagated from upstream. Layers without a bias get one (Conv, Gemm: a new bias input; MatMul:
an Add after it, or the Add that already follows it).

The least-squares refit and the `Compensator` that bundles refit and bias correction for the
passes live in passes/compensate.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..graph import Weight
from ..kernels.bias import conv_output_mean, conv_patch_mean, fc_output_mean

log = logging.getLogger(__name__)

BATCH = 256


# ----------------------------------------------------------------------------- running graphs


def _session(model: onnx.ModelProto, threads: int | None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _elem_type(tensor: gs.Tensor) -> int:
    dtype = tensor.dtype if tensor.dtype is not None else np.float32
    if isinstance(dtype, int):  # onnx-graphsurgeon may keep the TensorProto enum
        return dtype
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _batches(feeds: Mapping[str, np.ndarray], batch: int) -> Iterable[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    for start in range(0, n, batch):
        yield {k: v[start : start + batch] for k, v in feeds.items()}


def run_graph(
    graph: gs.Graph, feeds: Mapping[str, np.ndarray], *, batch: int = BATCH, threads: int | None = 1
) -> np.ndarray:
    """First output of `graph` on ONNX Runtime over all samples of `feeds`."""
    sess = _session(gs.export_onnx(graph, do_type_check=False), threads)
    return np.concatenate([sess.run(None, f)[0] for f in _batches(feeds, batch)])


def make_scorer(
    feeds: Mapping[str, np.ndarray],
    *,
    labels: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    batch: int = BATCH,
    threads: int | None = 1,
) -> Callable[[gs.Graph], float]:
    """`score(graph)`: top-1 accuracy against `labels`, else top-1 agreement with `reference`."""
    if labels is None and reference is None:
        raise ValueError("make_scorer needs labels or reference outputs")
    target = np.asarray(labels) if labels is not None else _top1(reference)

    def score(graph: gs.Graph) -> float:
        return float(
            (_top1(run_graph(graph, feeds, batch=batch, threads=threads)) == target).mean()
        )

    return score


def _top1(out: np.ndarray) -> np.ndarray:
    return np.asarray(out).reshape(len(out), -1).argmax(axis=1)


class Probe:
    """Means over the samples (axis 0) of chosen tensors of a graph, computed on ONNX Runtime.

    The graph is exported once; the initializers named in `overridable` can be replaced per
    call (`overrides`) without rebuilding the session.
    """

    def __init__(
        self,
        graph: gs.Graph,
        capture: Sequence[str],
        overridable: Sequence[str] = (),
        threads: int | None = 1,
    ):
        tensors = graph.tensors()
        inputs = {t.name for t in graph.inputs}
        self.from_feeds = [n for n in dict.fromkeys(capture) if n in inputs]
        self.outputs = [n for n in dict.fromkeys(capture) if n not in inputs]
        model = gs.export_onnx(graph, do_type_check=False)
        del model.graph.output[:]
        for name in self.outputs:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, _elem_type(tensors[name]), None)
            )
        inits = {t.name: t for t in model.graph.initializer}
        for name in overridable:
            t = inits[name]
            model.graph.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, t.dims))
        self.session = _session(model, threads) if self.outputs else None

    def batches(
        self,
        feeds: Mapping[str, np.ndarray],
        overrides: Mapping[str, np.ndarray] | None = None,
        batch: int = BATCH,
    ) -> Iterator[dict[str, np.ndarray]]:
        """The captured tensors, one calibration batch at a time."""
        extra = {k: np.asarray(v, dtype=np.float32) for k, v in (overrides or {}).items()}
        for f in _batches(feeds, batch):
            outs = self.session.run(self.outputs, {**f, **extra}) if self.session else []
            yield {**dict(zip(self.outputs, outs)), **{n: f[n] for n in self.from_feeds}}

    def means(
        self,
        feeds: Mapping[str, np.ndarray],
        overrides: Mapping[str, np.ndarray] | None = None,
        batch: int = BATCH,
    ) -> dict[str, np.ndarray]:
        """Mean over all samples of each captured tensor (float64)."""
        sums: dict[str, np.ndarray] = {}
        count = 0
        for captured in self.batches(feeds, overrides, batch):
            for name, arr in captured.items():
                part = np.asarray(arr, dtype=np.float64).sum(axis=0)
                sums[name] = sums[name] + part if name in sums else part
            count += len(next(iter(captured.values())))
        return {k: v / count for k, v in sums.items()}


# ----------------------------------------------------------------------------- layer statistics


def correction_unsupported(w: Weight) -> str:
    """Why bias correction cannot handle this layer, or '' if it can."""
    node = w.node
    if node.op not in ("Conv", "Gemm", "MatMul"):
        return f"{node.op} '{node.name}': bias correction supports Conv, Gemm and MatMul only"
    if node.op == "MatMul" and (w.index != 1 or w.values.ndim != 2):
        return f"MatMul '{node.name}': bias correction needs a 2-D weight as the second input"
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return f"Gemm '{node.name}': bias correction does not handle transA=1"
    if node.op == "Gemm" and float(node.attrs.get("beta", 1.0)) == 0.0:
        return f"Gemm '{node.name}': beta=0 ignores the bias"
    return ""


def layer_input(w: Weight) -> gs.Tensor:
    """The data input of a weight's layer (input 0 of Conv/Gemm/MatMul)."""
    return w.node.inputs[0]


def layer_stat(w: Weight, in_mean: np.ndarray) -> np.ndarray:
    """The statistic M from the layer input's mean over samples (see kernels/bias.py)."""
    node = w.node
    if node.op != "Conv":
        return in_mean.reshape(-1, in_mean.shape[-1]).mean(axis=0)  # (K,)
    kernel = list(node.attrs.get("kernel_shape") or w.values.shape[2:])
    d = len(kernel)
    strides = list(node.attrs.get("strides") or [1] * d)
    dilations = list(node.attrs.get("dilations") or [1] * d)
    pads = conv_pads(node, in_mean.shape[1:], kernel, strides, dilations)
    return conv_patch_mean(in_mean, kernel, strides, pads, dilations)


def conv_pads(
    node: gs.Node,
    spatial: Sequence[int],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
) -> list[int]:
    d = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(node.attrs.get("pads") or [0] * (2 * d))
    if auto == "VALID":
        return [0] * (2 * d)
    begins, ends = [], []
    for size, k, s, dil in zip(spatial, kernel, strides, dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * dil + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else large)
        ends.append(large if auto == "SAME_UPPER" else small)
    return begins + ends


def output_mean(w: Weight, values: np.ndarray, stat: np.ndarray) -> np.ndarray:
    """Per-channel mean output of the layer (bias excluded) if its weight were `values`."""
    node = w.node
    if node.op == "Conv":
        return conv_output_mean(values, stat, int(node.attrs.get("group", 1)))
    if node.op == "Gemm":
        alpha = float(node.attrs.get("alpha", 1.0))
        return alpha * fc_output_mean(values, stat, bool(node.attrs.get("transB", 0)))
    return fc_output_mean(values, stat, trans_b=False)


def input_stats(
    graph: gs.Graph,
    weights: Sequence[Weight],
    feeds: Mapping[str, np.ndarray],
    threads: int | None = 1,
) -> dict[str, np.ndarray]:
    """Weight name -> statistic M of its layer's input, from one calibration pass."""
    probe = Probe(graph, [layer_input(w).name for w in weights], threads=threads)
    means = probe.means(feeds)
    return {w.tensor.name: layer_stat(w, means[layer_input(w).name]) for w in weights}


# ----------------------------------------------------------------------------- bias slots


@dataclass
class BiasSlot:
    """Where a layer's per-channel bias lives; the layer adds `scale * tensor.values`."""

    tensor: gs.Constant
    scale: float
    created: bool
    add: gs.Node | None = None  # the Add inserted after a MatMul, if any

    def shift(self, delta: np.ndarray) -> None:
        """Add `delta` to the layer's output (per channel)."""
        new = np.asarray(self.tensor.values, dtype=np.float64) + delta / self.scale
        self.tensor.values = new.astype(np.asarray(self.tensor.values).dtype)


def out_channels(w: Weight) -> int:
    node, shape = w.node, w.values.shape
    if node.op == "Gemm":
        return shape[0] if node.attrs.get("transB", 0) else shape[1]
    return shape[-1] if node.op == "MatMul" else shape[0]


def bias_slot(graph: gs.Graph, w: Weight) -> BiasSlot | str:
    """The layer's bias (made private to it, created as zeros if absent), or why there is none."""
    reason = correction_unsupported(w)
    if reason:
        return reason
    node, o = w.node, out_channels(w)
    dtype = w.values.dtype
    if node.op == "MatMul":
        return _matmul_slot(graph, w, o)
    scale = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
        old = node.inputs[2]
        if not isinstance(old, gs.Constant):
            return f"{node.op} '{node.name}': bias is not a constant"
        vals = np.asarray(old.values)
        if vals.size not in (1, o):
            return f"{node.op} '{node.name}': bias of shape {vals.shape} is not per channel"
        if vals.shape == (o,) and len(old.outputs) == 1:
            return BiasSlot(old, scale, created=False)
        node.inputs[2] = gs.Constant(
            fresh_name(graph, old.name + "_own"),
            np.broadcast_to(vals.reshape(-1), (o,)).astype(vals.dtype),
        )
        return BiasSlot(node.inputs[2], scale, created=False)
    bias = gs.Constant(fresh_name(graph, node.name + "_bias"), np.zeros(o, dtype=dtype))
    if len(node.inputs) > 2:  # an omitted optional input ('')
        node.inputs[2] = bias
    else:
        node.inputs.append(bias)
    return BiasSlot(bias, scale, created=True)


def _matmul_slot(graph: gs.Graph, w: Weight, o: int) -> BiasSlot:
    out = w.node.outputs[0]
    if len(out.outputs) == 1 and out.outputs[0].op == "Add" and out not in graph.outputs:
        add = out.outputs[0]
        other = [t for t in add.inputs if t is not out]
        if (
            len(other) == 1
            and isinstance(other[0], gs.Constant)
            and np.asarray(other[0].values).shape == (o,)
            and len(other[0].outputs) == 1
        ):
            return BiasSlot(other[0], 1.0, created=False)
    bias = gs.Constant(fresh_name(graph, w.node.name + "_bias"), np.zeros(o, dtype=w.values.dtype))
    mid = gs.Variable(fresh_name(graph, out.name + "_nobias"), dtype=out.dtype, shape=out.shape)
    w.node.outputs[0] = mid
    add = gs.Node(
        "Add", fresh_name(graph, w.node.name + "_bias_add"), inputs=[mid, bias], outputs=[out]
    )
    graph.nodes.append(add)
    return BiasSlot(bias, 1.0, created=True, add=add)


def drop_if_unused(graph: gs.Graph, w: Weight, slot: BiasSlot) -> bool:
    """Undo a created bias that stayed all zero; True if removed."""
    if not slot.created or np.any(np.asarray(slot.tensor.values)):
        return False
    if slot.add is not None:
        out = slot.add.outputs[0]
        slot.add.outputs.clear()
        slot.add.inputs.clear()
        w.node.outputs[0] = out
        graph.nodes.remove(slot.add)
    else:
        w.node.inputs.pop()
    return True


def fresh_name(graph: gs.Graph, base: str) -> str:
    names = set(graph.tensors()) | {n.name for n in graph.nodes}
    name, i = base, 1
    while name in names:
        name, i = f"{base}_{i}", i + 1
    return name


# ----------------------------------------------------------------------------- correction


@dataclass
class Corrected:
    """One layer to correct: its weight, bias slot, and weight + input statistic before."""

    weight: Weight
    slot: BiasSlot
    before: np.ndarray
    stat_before: np.ndarray


def correct_biases(
    graph: gs.Graph,
    layers: Sequence[Corrected],
    feeds: Mapping[str, np.ndarray],
    threads: int | None = 1,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, np.ndarray]:
    """Sequential bias correction (topological order); returns weight name -> output shift."""
    if not layers:
        return {}
    probe = Probe(
        graph,
        [layer_input(c.weight).name for c in layers],
        overridable=[c.slot.tensor.name for c in layers],
        threads=threads,
    )
    overrides: dict[str, np.ndarray] = {}
    dirty: set[str] = set()  # nodes downstream of a correction since the last capture
    means: dict[str, np.ndarray] = {}
    shifts = {}
    for i, c in enumerate(layers):
        if not means or c.weight.node.name in dirty:
            progress(f"bias correction {i + 1}/{len(layers)}")
            means, dirty = probe.means(feeds, overrides), set()
        stat_now = layer_stat(c.weight, means[layer_input(c.weight).name])
        delta = output_mean(c.weight, c.before, c.stat_before) - output_mean(
            c.weight, c.weight.values, stat_now
        )
        c.slot.shift(delta)
        overrides[c.slot.tensor.name] = np.asarray(c.slot.tensor.values)
        dirty |= downstream_nodes(c.weight.node)
        shifts[c.weight.tensor.name] = delta
    return shifts


def downstream_nodes(node: gs.Node) -> set[str]:
    """Names of the nodes that depend on `node`'s outputs (itself excluded)."""
    seen: set[str] = set()
    stack = [t for t in node.outputs]
    while stack:
        for consumer in stack.pop().outputs:
            if consumer.name not in seen:
                seen.add(consumer.name)
                stack.extend(consumer.outputs)
    return seen
