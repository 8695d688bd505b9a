"""The two forms a binarized Conv takes in the graph (see ``binarize`` for the method).

- portable (standard ONNX, as ``onnxcompress.ops`` gives it): [Sub(x, t)] -> Where(x >= 0, 1, -1)
  (or the kept Sign) -> Conv(+-1 weights) -> Mul(alpha) -> [Mul(K)] -> Add(B);
- native: the ``XnorConv`` custom op with bit-packed weights, built from a lowered portable
  block with the same alpha and B (two of them for an exact ONNX Sign(0) = 0).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .. import ops
from ..graph import fresh_name
from ..kernels.xnor_ref import pack_weights, unpack_weights
from ..ops import CONV_ATTRS, encode_conv_attrs


class Mode(str, enum.Enum):
    XNOR = "xnor"
    BWN = "bwn"


@dataclass
class Layer:
    """A Conv the pass can binarize, and how (filled by `analyze`, then by the lowering)."""

    node: gs.Node
    weight: np.ndarray  # float32 [M, C, KH, KW]
    bias: np.ndarray  # float32 [M]
    source: gs.Tensor  # what the op reads: the Sign's input for a Sign-fed xnor layer
    from_sign: bool  # mode xnor and the conv input is the output of ONNX Sign
    scale: np.ndarray | None  # a[m] when the weights are exactly +-a[m] per channel
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    mode_bwn: bool = False
    name: str = ""
    built: dict[str, Any] = field(default_factory=dict)  # handles into the lowered block

    @property
    def exact(self) -> bool:
        """Binarizing this layer approximates nothing (trained binary)."""
        return self.scale is not None and (self.from_sign or self.mode_bwn)


# ----------------------------------------------------------------------------- portable form


def _const_t(graph: gs.Graph, base: str, arr: np.ndarray) -> gs.Constant:
    return gs.Constant(fresh_name(graph, base), np.ascontiguousarray(arr))


def _var(graph: gs.Graph, base: str) -> gs.Variable:
    return gs.Variable(fresh_name(graph, base))


def _add(graph: gs.Graph, op: str, name: str, inputs: list, outputs: list, **attrs) -> gs.Node:
    node = gs.Node(op, fresh_name(graph, name), attrs=attrs, inputs=inputs, outputs=outputs)
    graph.nodes.append(node)
    return node


def _detach(node: gs.Node) -> None:
    node.inputs.clear()
    node.outputs.clear()


def lower_portable(graph: gs.Graph, layer: Layer, mode: Mode, exact_zero: bool,
                   scale_inputs: bool = False, center: bool = False) -> None:
    """Replace the Conv by the standard-ONNX form of ``ops.py``:
    [Sub(x, t)] -> [Where(x >= 0, 1, -1) | kept Sign] -> Conv(+-1 W) -> Mul(alpha) -> Add(B);
    with `center`, the threshold t (zeros until the refit sets it) for lossy xnor layers."""
    node, base = layer.node, layer.node.name
    threshold = None
    if center and mode is Mode.XNOR and not layer.from_sign and not layer.exact:
        c = layer.weight.shape[1]
        threshold = _const_t(graph, base + "_threshold", np.zeros((1, c, 1, 1), np.float32))
        centered = _var(graph, base + "_centered")
        _add(graph, "Sub", base + "_center", [layer.source, threshold], [centered])
        raw, layer.source = layer.source, centered
    bits, alpha = pack_weights(layer.weight)
    if layer.scale is not None:
        alpha = layer.scale
    m = layer.weight.shape[0]
    out = node.outputs[0]
    if mode is Mode.BWN or (layer.from_sign and exact_zero):
        xs = node.inputs[0]  # bwn: the input as is; Sign-fed xnor: ONNX Sign's output
    else:
        ge = _var(graph, base + "_nonneg")
        _add(graph, "GreaterOrEqual", base + "_ge", [layer.source,
             _const_t(graph, base + "_zero", np.array(0, np.float32))], [ge])
        xs = _var(graph, base + "_sgn")
        _add(graph, "Where", base + "_sgn", [ge, _const_t(graph, base + "_one", np.array(1, np.float32)),
             _const_t(graph, base + "_minus_one", np.array(-1, np.float32))], [xs])
    wpm1 = _const_t(graph, base + "_wpm1", unpack_weights(bits, layer.weight.shape[1], layer.kernel))
    conv_out, scaled = _var(graph, base + "_count"), _var(graph, base + "_scaled")
    conv = _add(graph, "Conv", base, [xs, wpm1], [conv_out], kernel_shape=list(layer.kernel),
                strides=list(layer.strides), pads=list(layer.pads), dilations=list(layer.dilations))
    a = _const_t(graph, base + "_alpha", alpha.reshape(1, m, 1, 1).astype(np.float32))
    b = _const_t(graph, base + "_B", layer.bias.reshape(1, m, 1, 1).astype(np.float32))
    mul = _add(graph, "Mul", base + "_scale", [conv_out, a], [scaled])
    to_add = scaled
    if scale_inputs and not layer.exact:
        to_add = _var(graph, base + "_k_scaled")
        _add(graph, "Mul", base + "_k_scale", [scaled, _input_scale(graph, layer)], [to_add])
    add = _add(graph, "Add", base + "_bias", [to_add, b], [out])
    _detach(node)
    graph.nodes.remove(node)
    conv.name = base  # the layer keeps its name (fresh_name saw the old node)
    layer.node = conv
    layer.built = {"bits": bits, "alpha": a, "B": b, "mul": mul, "add": add, "xs": xs,
                   "out": out, "scaled": scaled, "k": to_add is not scaled,
                   "threshold": threshold, "raw": raw if threshold is not None else None}


def box_filter(layer: Layer) -> np.ndarray:
    """The [1, C, KH, KW] filter of K: mean over the channels and the kernel window."""
    c = layer.weight.shape[1]
    return np.full((1, c, *layer.kernel), 1.0 / (c * layer.kernel[0] * layer.kernel[1]),
                   np.float32)


def _input_scale(graph: gs.Graph, layer: Layer) -> gs.Variable:
    """K [N, 1, OH, OW] = Conv(|X|, box) with the layer's geometry (XNOR-Net section 3.2)."""
    base = layer.name
    absx, k = _var(graph, base + "_abs"), _var(graph, base + "_K")
    _add(graph, "Abs", base + "_abs", [layer.source], [absx])
    box = _const_t(graph, base + "_box", box_filter(layer))
    _add(graph, "Conv", base + "_K", [absx, box], [k],
         kernel_shape=list(layer.kernel), strides=list(layer.strides), pads=list(layer.pads),
         dilations=list(layer.dilations))
    return k


# ----------------------------------------------------------------------------- native form


def _xnor_node(graph: gs.Graph, layer: Layer, name: str, x: gs.Tensor, bits: gs.Constant,
               alpha: gs.Constant, bias: gs.Constant, out: gs.Tensor, mode: str) -> gs.Node:
    attrs = {
        ops.ATTR_KERNEL_SHAPE: list(layer.kernel), ops.ATTR_STRIDES: list(layer.strides),
        ops.ATTR_PADS: list(layer.pads), ops.ATTR_DILATIONS: list(layer.dilations),
        ops.ATTR_GROUP: 1, ops.ATTR_MODE: ops.check_op_mode(mode),
        CONV_ATTRS: encode_conv_attrs(layer.kernel, layer.strides, layer.pads, layer.dilations),
    }
    node = gs.Node(ops.XNOR_CONV, fresh_name(graph, name), attrs=attrs,
                   inputs=[x, bits, alpha, bias], outputs=[out], domain=ops.DOMAIN)
    graph.nodes.append(node)
    return node


def lower_native(graph: gs.Graph, layer: Layer, mode: Mode, exact_zero: bool) -> None:
    """Replace a lowered portable block by one XnorConv (mode "sign" for an exact Sign(0) = 0)."""
    built, base = layer.built, layer.name
    m = layer.weight.shape[0]
    alpha = np.asarray(built["alpha"].values, np.float32).reshape(m)
    bias = np.asarray(built["B"].values, np.float32).reshape(m)
    bits = _const_t(graph, base + "_bits", built["bits"])
    out = built["out"]
    portable = [layer.node, built["mul"]] + ([] if built["k"] else [built["add"]])
    for n in portable:
        _detach(n)
        graph.nodes.remove(n)
    if mode is Mode.XNOR and layer.from_sign and exact_zero:
        node = _xnor_node(graph, layer, base, layer.source, bits,
                          _const_t(graph, base + "_alpha", alpha),
                          _const_t(graph, base + "_B", bias), out, ops.MODE_SIGN)
    elif built["k"]:  # XnorConv then the kept Mul(K) and Add(B)
        zeros = _const_t(graph, base + "_zeros", np.zeros(m, np.float32))
        node = _xnor_node(graph, layer, base, layer.source, bits,
                          _const_t(graph, base + "_alpha", alpha), zeros, built["scaled"],
                          mode.value)
    else:
        x = layer.source if mode is Mode.XNOR else built["xs"]
        node = _xnor_node(graph, layer, base, x, bits, _const_t(graph, base + "_alpha", alpha),
                          _const_t(graph, base + "_B", bias), out, mode.value)
    node.name = base
    layer.node = node
