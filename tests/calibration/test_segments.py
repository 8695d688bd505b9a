"""Running part of a graph from values already computed: the same numbers as the whole graph."""

from __future__ import annotations

import numpy as np

from onnxcompress.calibration import run_graph
from onnxcompress.calibration.segments import (
    capture,
    frontier,
    incremental_inputs,
    needed,
    run_batches,
    subgraph_session,
)
from onnxcompress.data import Dataset
from onnxcompress.graph import downstream_nodes, iter_weights, to_graph
from onnxcompress.io import load_model
from onnxcompress.normalize import normalize
from tests.conftest import ZOO


def resnet():
    return to_graph(normalize(load_model(ZOO / "resnet.onnx")))


def data(n: int = 40) -> Dataset:
    x = np.load(ZOO / "data" / "eval.npz")["input"][:n]
    return Dataset({"input": x}, None, batch=16)


def test_a_layer_and_what_follows_it_from_the_frontier() -> None:
    g, ds = resnet(), data()
    w = iter_weights(g)[4]  # inside the residual stages: its frontier holds the skip branch
    after = downstream_nodes(w.node) | {w.node.name}
    nodes = [n for n in needed(g, ["logits"], set()) if n.name in after]
    inputs = frontier(nodes)
    assert len(inputs) >= 2 and len(nodes) < len(g.nodes)
    state = capture(g, inputs, ds)
    sess = subgraph_session(g, nodes, inputs, ["logits"], state[0], [w.tensor.name])
    w.set_values(w.values * 0.5)  # the live graph changes; the session feeds its new value
    got = np.concatenate([b["logits"] for b in run_batches(sess, state)])
    np.testing.assert_allclose(got, run_graph(g, ds), rtol=1e-4, atol=1e-4)


def test_incremental_inputs_follow_each_change() -> None:
    g, ds = resnet(), data()
    weights = iter_weights(g)
    seen = []
    for w, (layer, now) in zip(weights, incremental_inputs(g, [w.node for w in weights], ds)):
        name = layer.inputs[0].name
        want = capture(g, [name], ds)
        for a, b in zip(now, want):
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4)
        w.set_values(w.values * 0.9)  # change it before the next layer's input is computed
        seen.append(name)
    assert len(seen) == len(weights)
