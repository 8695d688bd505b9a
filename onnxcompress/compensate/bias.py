"""Layer-wise bias correction, and where each layer's bias lives.

Bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2, empirical variant):
for each perturbed layer l, in topological order,

    b_l <- b_l + (E[W_l x_l] - E[W'_l x'_l]) / beta

where x_l is the layer input in the reference model and x'_l its input in the compressed model
with every earlier layer already corrected, so each correction also absorbs the mean error
propagated from upstream. A Conv or fully connected layer is linear in its input, so the mean
output of any weight W follows from one statistic M of the input (kernels/bias.py):
`layer_stat` makes M from the input's mean over samples, `output_mean(w, W, M)` the per-channel
mean output. Layers without a bias get one (Conv, Gemm: a new bias input; MatMul: an Add after
it, or the Add that already follows it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..calibration.segments import incremental_inputs
from ..data import Dataset
from ..graph import Weight, conv_geometry, fresh_name
from ..kernels.bias import conv_output_mean, conv_patch_mean, fc_output_mean


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
    if w.node.op != "Conv":
        return in_mean.reshape(-1, in_mean.shape[-1]).mean(axis=0)  # (K,)
    geo = conv_geometry(w.node, in_mean.shape[1:])
    return conv_patch_mean(in_mean, geo.kernel, geo.strides, geo.pads, geo.dilations)


def output_mean(w: Weight, values: np.ndarray, stat: np.ndarray) -> np.ndarray:
    """Per-channel mean output of the layer (bias excluded) if its weight were `values`."""
    node = w.node
    if node.op == "Conv":
        return conv_output_mean(values, stat, int(node.attrs.get("group", 1)))
    if node.op == "Gemm":
        alpha = float(node.attrs.get("alpha", 1.0))
        return alpha * fc_output_mean(values, stat, bool(node.attrs.get("transB", 0)))
    return fc_output_mean(values, stat, trans_b=False)


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


def bias_slot(graph: gs.Graph, w: Weight) -> BiasSlot | str:
    """The layer's bias (made private to it, created as zeros if absent), or why there is none."""
    reason = correction_unsupported(w)
    if reason:
        return reason
    node, o = w.node, w.out_channels
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
    bias = gs.Constant(fresh_name(graph, node.name + "_bias"), np.zeros(o, dtype=w.values.dtype))
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
    data: Dataset,
    threads: int | None = 1,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, np.ndarray]:
    """Sequential bias correction (topological order); returns weight name -> output shift.
    Each layer's input is computed from the previous layer's on: one pass over the model."""
    shifts = {}
    inputs = incremental_inputs(graph, [c.weight.node for c in layers], data, threads)
    for i, (c, (_, now)) in enumerate(zip(layers, inputs)):
        progress(f"bias correction {i + 1}/{len(layers)}")
        name = layer_input(c.weight).name
        mean = sum(b[name].astype(np.float64).sum(axis=0) for b in now) / len(data)
        delta = output_mean(c.weight, c.before, c.stat_before) - output_mean(
            c.weight, c.weight.values, layer_stat(c.weight, mean))
        c.slot.shift(delta)
        shifts[c.weight.tensor.name] = delta
    return shifts


def input_stats(snapshot_means: Mapping[str, np.ndarray], weights: Sequence[Weight]
                ) -> dict[str, np.ndarray]:
    """Weight name -> statistic M of its layer's input, from the input means by tensor name."""
    return {w.tensor.name: layer_stat(w, snapshot_means[layer_input(w).name]) for w in weights}
