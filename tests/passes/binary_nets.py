"""Small seeded models for the binarize tests: a float conv net, a net trained binary (Sign
inputs, +-alpha weights, BatchNorm), and ORT runners with the XnorConv op registered."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxcompress.graph import to_graph, to_model
from onnxcompress.normalize import normalize
from onnxcompress.passes import binarize as B
from onnxcompress.passes.base import Context, PassReport
from onnxcompress.runtime import session_options

# first conv float, three middle convs, a depthwise conv, last Gemm
FLOAT_NET = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[N, 3, 10, 10] input) => (float[N, 4] logits) {
    c1 = Conv <pads = [1, 1, 1, 1]> (input, w1, b1)
    r1 = Relu (c1)
    c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
    r2 = Relu (c2)
    c3 = Conv <pads = [1, 1, 1, 1], group = 16> (r2, wd)
    c4 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (c3, w4)
    r4 = Relu (c4)
    p = GlobalAveragePool (r4)
    f = Flatten (p)
    logits = Gemm <transB = 1> (f, wf, bf)
}
"""
FLOAT_LAYERS = ("Conv_0", "Conv_2", "Conv_4", "Conv_5", "Gemm_9")

# trained binary: float conv+BN, then Sign -> conv(+-a) -> BN twice, float Gemm
BINARY_NET = """
<ir_version: 8, opset_import: ["" : 17]>
bnet (float[N, 2, 8, 8] input) => (float[N, 3] logits) {
    c1 = Conv <pads = [1, 1, 1, 1]> (input, w1)
    n1 = BatchNormalization (c1, s1, o1, m1, v1)
    a1 = Sign (n1)
    c2 = Conv <pads = [1, 1, 1, 1]> (a1, w2)
    n2 = BatchNormalization (c2, s2, o2, m2, v2)
    a2 = Sign (n2)
    c3 = Conv <pads = [1, 0, 2, 1], strides = [2, 1], dilations = [1, 2]> (a2, w3)
    n3 = BatchNormalization (c3, s3, o3, m3, v3)
    p = GlobalAveragePool (n3)
    f = Flatten (p)
    logits = Gemm <transB = 1> (f, wf, bf)
}
"""


def _model(text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def float_net(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    n = lambda *s: rng.normal(0, np.sqrt(2 / np.prod(s[1:])), s)
    return _model(FLOAT_NET, {
        "w1": n(16, 3, 3, 3), "b1": rng.normal(0, 0.1, 16), "w2": n(16, 16, 3, 3),
        "b2": rng.normal(0, 0.1, 16), "wd": n(16, 1, 3, 3), "w4": n(8, 16, 3, 3),
        "wf": n(4, 8), "bf": rng.normal(0, 0.1, 4)})


def _bn(rng: np.random.Generator, c: int, k: str) -> dict[str, np.ndarray]:
    return {f"s{k}": rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c),
            f"o{k}": rng.normal(0, 0.5, c), f"m{k}": rng.normal(0, 0.5, c),
            f"v{k}": rng.uniform(0.5, 1.5, c)}


def pm_alpha(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Weights of exactly two values +-alpha[m] per output channel."""
    alpha = rng.uniform(0.05, 0.5, shape[0]).reshape(-1, 1, 1, 1)
    return alpha * rng.choice([-1.0, 1.0], shape)


def binary_net(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    return _model(BINARY_NET, {
        "w1": rng.normal(0, 0.5, (9, 2, 3, 3)), **_bn(rng, 9, "1"),
        "w2": pm_alpha(rng, (65, 9, 3, 3)), **_bn(rng, 65, "2"),
        "w3": pm_alpha(rng, (7, 65, 3, 2)), **_bn(rng, 7, "3"),
        "wf": rng.normal(0, 0.3, (3, 7)), "bf": rng.normal(0, 0.1, 3)})


def images(shape: tuple[int, ...], n: int = 5, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, *shape)).astype(np.float32)


def run_ort(model: onnx.ModelProto, x: np.ndarray, optimize: bool = False) -> np.ndarray:
    """First output on ONNX Runtime with XnorConv registered; optimizations off by default
    (ConvMulFusion would fold alpha into the portable form's Conv)."""
    so = session_options(threads=1)
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def binarize(model: onnx.ModelProto, ctx: Context | None = None, **cfg
             ) -> tuple[onnx.ModelProto, PassReport]:
    """Normalize `model`, run the pass with `cfg`, return the model and the report."""
    norm = normalize(model)
    graph = to_graph(norm)
    report = B.run(graph, B.Config(**cfg), ctx or Context())
    return to_model(graph, like=norm), report
