"""Metrics in the budget's units, and which output and metric measure a model's answer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxcompress.errors import BadInputError
from onnxcompress.graph import to_graph
from onnxcompress.metrics import Metric, choose_metric, distortion, drop, score, scored_output


def test_scores_in_points() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    out = np.array([[0.5, 0.0], [1.0, 0.0], [1.0, 0.0]])
    labels = np.array([0, 1, 1])
    assert score(Metric.TOP1, out, ref, labels) == pytest.approx(100 / 3)
    assert score(Metric.AGREEMENT, out, ref) == pytest.approx(200 / 3)
    assert drop(Metric.AGREEMENT, out, ref) == pytest.approx(100 / 3)
    assert score(Metric.COSINE, out, ref) == pytest.approx(200 / 3)  # 1, 0, 1
    assert score(Metric.MSE, ref, ref) == 0.0
    assert drop(Metric.MSE, out, ref) == pytest.approx(100 * (0.25 + 2) / 3)
    t = np.ones((3, 2))
    assert score(Metric.PSNR, t, ref, targets=t) == 100.0  # capped for an exact answer
    assert score(Metric.PSNR, t * 0.9, ref, targets=t) == pytest.approx(20.0)


def _model(text: str, weights: dict[str, tuple]) -> onnx.ModelProto:
    m = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    m.graph.initializer.extend(numpy_helper.from_array(rng.normal(size=s).astype(np.float32), k)
                               for k, s in weights.items())
    return m


ENCODER = """
<ir_version: 8, opset_import: ["" : 17]>
enc (int64[N, S] ids, float[N, S] mask) => (int64[N, S] out, float[N, S, 8] tokens,
                                          float[N, 8] sentence) {
    out = Identity (ids)
    e = Gather (table, ids)
    tokens = MatMul (e, w)
    m = Unsqueeze (mask, axes)
    s = Mul (tokens, m)
    sum = ReduceSum <keepdims = 0> (s, one)
    n = ReduceSum <keepdims = 0> (m, one)
    sentence = Div (sum, n)
}
"""


def test_the_answer_is_the_pooled_embedding_not_the_pass_through() -> None:
    m = _model(ENCODER, {"table": (50, 8), "w": (8, 8)})
    m.graph.initializer.extend([numpy_helper.from_array(np.array([2], np.int64), "axes"),
                                numpy_helper.from_array(np.array([1], np.int64), "one")])
    g = to_graph(m)
    assert scored_output(g) == "sentence"
    assert choose_metric(g, "sentence", labels=False) is Metric.COSINE
    assert choose_metric(g, "tokens", labels=False) is Metric.MSE
    with pytest.raises(BadInputError, match="no evidence"):
        scored_output(g, "out")
    with pytest.raises(BadInputError, match="outputs are out, tokens, sentence"):
        scored_output(g, "nope")


def test_classifiers_are_scored_by_argmax() -> None:
    m = _model("""
    <ir_version: 8, opset_import: ["" : 17]>
    c (float[N, 4] x) => (float[N, 3] p) { h = Gemm <transB = 1> (x, w, b)  p = Softmax (h) }""",
               {"w": (3, 4), "b": (3,)})
    g = to_graph(m)
    assert choose_metric(g, "p", labels=True) is Metric.TOP1
    assert choose_metric(g, "p", labels=False) is Metric.AGREEMENT
    assert choose_metric(g, "p", labels=False, metric="cosine") is Metric.COSINE
    with pytest.raises(BadInputError, match="needs 'labels'"):
        choose_metric(g, "p", labels=False, metric="top1")
    with pytest.raises(BadInputError, match="needs 'targets'"):
        choose_metric(g, "p", labels=True, metric="psnr")


def test_distortion_is_never_below_zero() -> None:
    """Probabilities a rounding away from summing to 1 give a KL below zero; it would rank a
    change above no change, so it reads as none."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=32)
    assert distortion(Metric.AGREEMENT, probs * 1.0009, probs) == 0.0
    assert distortion(Metric.AGREEMENT, probs[:, ::-1], probs) > 0.0
    assert all(distortion(metric, probs, probs) == 0.0 for metric in Metric)
