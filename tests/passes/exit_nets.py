"""Small seeded classifiers for the early-exit tests (ONNX text + numpy weights)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# stem, a residual block, one more conv, global pooling, a linear classifier
RESNET = """
<ir_version: 8, opset_import: ["" : 17]>
res (float[N, 1, 12, 12] input) => (float[N, 5] logits) {
    c0 = Conv <pads = [1, 1, 1, 1]> (input, w0, b0)
    r0 = Relu (c0)
    p0 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r0)
    c1 = Conv <pads = [1, 1, 1, 1]> (p0, w1, b1)
    r1 = Relu (c1)
    c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
    s = Add (c2, p0)
    r2 = Relu (s)
    c3 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (r2, w3, b3)
    r3 = Relu (c3)
    g = GlobalAveragePool (r3)
    f = Flatten (g)
    logits = Gemm <transB = 1> (f, wf, bf)
}
"""
# the same net answering probabilities shaped (N, K, 1, 1), like the old model zoo's
RESNET_PROB = RESNET.replace("=> (float[N, 5] logits)", "=> (float[N, 5, 1, 1] prob)").replace(
    "    logits = Gemm <transB = 1> (f, wf, bf)\n",
    "    z = Gemm <transB = 1> (f, wf, bf)\n    sm = Softmax <axis = 1> (z)\n"
    "    prob = Reshape (sm, pshape)\n")
WEIGHTS = {"w0": (8, 1, 3, 3), "b0": (8,), "w1": (8, 8, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3),
           "b2": (8,), "w3": (16, 8, 3, 3), "b3": (16,), "wf": (5, 16), "bf": (5,)}
CUTS = ("Conv_0", "Relu_1", "MaxPool_2", "Add_6", "Relu_7", "Conv_8", "Relu_9",
        "GlobalAveragePool_10", "Flatten_11")
INSIDE = ("Conv_3", "Relu_4", "Conv_5")  # inside the residual pair


def resnet(seed: int = 0, text: str = RESNET) -> onnx.ModelProto:
    """Random convolutions, then a classifier fitted (least squares, in numpy) to say where
    the blob of `images` is: confident on clear blobs, unsure on faint ones, like a trained
    net."""
    model = _resnet(seed, text)
    f = _features(model, images(2000, seed=99))
    onehot = np.eye(5)[kinds(2000, seed=99)] * 8.0 - 4.0
    fa = np.hstack([f, np.ones((len(f), 1))])
    sol = np.linalg.lstsq(fa, onehot, rcond=None)[0]
    for t in model.graph.initializer:
        if t.name in ("wf", "bf"):
            value = sol[:-1].T if t.name == "wf" else sol[-1]
            t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), t.name))
    return model


def _features(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["f"], {"input": x})[0].astype(np.float64)


def _resnet(seed: int, text: str) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(text)
    arrays = {}
    for name, shape in WEIGHTS.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        std = np.sqrt(2.0 / fan_in) if len(shape) > 1 else 0.1
        arrays[name] = rng.normal(0, std, shape)
    if "pshape" in text:
        arrays["pshape"] = np.array([-1, 5, 1, 1])
    model.graph.initializer.extend(
        numpy_helper.from_array(v.astype(np.int64 if k == "pshape" else np.float32), k)
        for k, v in arrays.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def kinds(n: int, seed: int = 1) -> np.ndarray:
    """The class of each of `images(n, seed)`: where its blob is (0-3), or 4 for none."""
    return np.random.default_rng(seed).integers(0, 5, n)


def images(n: int, seed: int = 1) -> np.ndarray:
    """A blob in one of four places (or none) on noise, of random strength: easy for some
    samples, hard for others."""
    kind = kinds(n, seed)
    rng = np.random.default_rng(seed + 1000)
    x = rng.normal(0, 0.5, (n, 1, 12, 12))
    for i, k in enumerate(kind):
        if k < 4:
            r, c = 6 * (k // 2) + 1, 6 * (k % 2) + 1
            x[i, 0, r:r + 4, c:c + 4] += rng.uniform(0.0, 1.5)
    return x.astype(np.float32)
