"""Output means from input means: checked against ONNX Runtime's Conv and Gemm."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxcompress.kernels.bias import conv_output_mean, conv_patch_mean, fc_output_mean


def ort_conv(x: np.ndarray, w: np.ndarray, **attrs) -> np.ndarray:
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"pads": [0, 2, 1, 0], "strides": [2, 3]},
        {"pads": [2, 2, 2, 2], "dilations": [2, 2], "group": 2},
        {"strides": [2, 2], "group": 4},
    ],
)
def test_conv_output_mean_matches_onnxruntime(attrs: dict) -> None:
    rng = np.random.default_rng(0)
    group = attrs.get("group", 1)
    x = rng.normal(0.3, 1, (16, 4, 11, 9)).astype(np.float32)
    w = rng.normal(0, 1, (8, 4 // group, 3, 3)).astype(np.float32)
    want = ort_conv(x, w, **attrs).mean(axis=(0, 2, 3))
    stat = conv_patch_mean(
        x.mean(axis=0).astype(np.float64),
        [3, 3],
        attrs.get("strides", [1, 1]),
        attrs.get("pads", [0, 0, 0, 0]),
        attrs.get("dilations", [1, 1]),
    )
    np.testing.assert_allclose(conv_output_mean(w, stat, group), want, rtol=1e-4, atol=1e-5)


def test_fc_output_mean() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 1, (100, 6))
    w = rng.normal(0, 1, (4, 6))
    np.testing.assert_allclose(fc_output_mean(w, x.mean(0), trans_b=True), (x @ w.T).mean(0))
    np.testing.assert_allclose(fc_output_mean(w.T, x.mean(0), trans_b=False), (x @ w.T).mean(0))
