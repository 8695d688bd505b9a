"""End-to-end on the Fashion-MNIST zoo (skipped until models/ holds the trained models):
prune + cluster must keep LeNet-300-100 within a point of its eval accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcompress import calibration as C
from onnxcompress.graph import to_graph
from onnxcompress.io import load_model
from onnxcompress.normalize import normalize
from onnxcompress.passes import cluster, prune
from tests.helpers import calib_context

ZOO = Path(__file__).resolve().parents[2] / "models"
pytestmark = pytest.mark.skipif(
    not (ZOO / "lenet300.onnx").is_file() or not (ZOO / "data" / "eval.npz").is_file(),
    reason="zoo model or data not built",
)


def accuracy(graph, data) -> float:
    out = C.run_graph(graph, {"input": data["input"]})
    return 100.0 * float((out.argmax(1) == data["labels"]).mean())


def test_lenet300_global_prune_refit_and_cluster_within_one_point() -> None:
    calib, evald = np.load(ZOO / "data" / "calib.npz"), np.load(ZOO / "data" / "eval.npz")
    g = to_graph(normalize(load_model(ZOO / "lenet300.onnx")))
    before = accuracy(g, evald)
    ctx = calib_context({"input": calib["input"]}, labels=calib["labels"])
    prune.run(g, prune.Config(mode="global", sparsity=0.9), ctx)
    cluster.run(g, cluster.Config(), ctx)
    after = accuracy(g, evald)
    assert before - after <= 1.0, (before, after)
    weights = [np.asarray(t.values) for n, t in g.tensors().items() if n.endswith("weight")]
    total = sum(w.size for w in weights)
    assert sum((w == 0).sum() for w in weights) / total == pytest.approx(0.9, abs=0.01)
