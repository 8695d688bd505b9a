"""Small seeded models (ONNX text + numpy weights) and data for the prune/cluster tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxcompress.graph import to_graph
from onnxcompress.passes.base import Context
from tests.helpers import calib_context

# conv with bias, strided conv without bias, Gemm (transB) with bias, MatMul without bias
NET = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[N, 1, 12, 12] input) => (float[N, 10] logits) {
    c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (input, conv1_w, conv1_b)
    r1 = Relu (c1)
    p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
    c2 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3], strides = [2, 2]> (p1, conv2_w)
    r2 = Relu (c2)
    f = Flatten (r2)
    h = Gemm <transB = 1> (f, fc1_w, fc1_b)
    r3 = Relu (h)
    logits = MatMul (r3, fc2_w)
}
"""
LAYERS = ("Conv_0", "Conv_3", "Gemm_6", "MatMul_8")  # names given by graph.to_graph
WEIGHTS = ("conv1_w", "conv2_w", "fc1_w", "fc2_w")
BIASES = ("conv1_b", "fc1_b")


def net(seed: int = 0, redundant_fc: bool = False) -> onnx.ModelProto:
    """He-initialized weights; `redundant_fc` makes fc1 90% near-zero (an easy layer to prune)."""
    rng = np.random.default_rng(seed)
    fc1 = rng.normal(0, np.sqrt(2 / 144), (64, 144))
    if redundant_fc:
        fc1 *= np.where(rng.random(fc1.shape) < 0.1, 3.0, 0.01)
    weights = {
        "conv1_w": rng.normal(0, np.sqrt(2 / 9), (8, 1, 3, 3)),
        "conv1_b": rng.normal(0, 0.1, 8),
        "conv2_w": rng.normal(0, np.sqrt(2 / 72), (16, 8, 3, 3)),
        "fc1_w": fc1,
        "fc1_b": rng.normal(0, 0.1, 64),
        "fc2_w": rng.normal(0, np.sqrt(2 / 64), (64, 10)),
    }
    model = onnx.parser.parse_model(NET)
    model.graph.initializer.extend(
        numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(n: int = 400, seed: int = 1) -> dict[str, np.ndarray]:
    """Smooth-ish positive images, so layer means are far from zero (bias shifts matter)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.0, (n, 1, 12, 12)).astype(np.float32)
    return {"input": x}


def graph(seed: int = 0, redundant_fc: bool = False) -> gs.Graph:
    return to_graph(net(seed, redundant_fc))


def context(g: gs.Graph, n: int = 400, progress=lambda m: None) -> Context:
    """Calibration data, scored by top-1 agreement with the graph as a pass finds it."""
    return calib_context(feeds(n), g.outputs[0].name, progress=progress)


def scorer(ctx: Context, g: gs.Graph):
    """score(graph): top-1 agreement with `g` as it is now, on the context's data."""
    return ctx.calibration.scorer(ctx.calibration.snapshot(g))


def weights_of(g: gs.Graph) -> dict[str, np.ndarray]:
    return {
        n: np.asarray(t.values).copy() for n, t in g.tensors().items() if isinstance(t, gs.Constant)
    }


def export(g: gs.Graph) -> onnx.ModelProto:
    model = gs.export_onnx(g, do_type_check=False)
    onnx.checker.check_model(model, full_check=True)
    return model
