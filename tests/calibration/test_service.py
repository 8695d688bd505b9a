"""The calibration service: graph sessions, snapshots with cached captures, scorers."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.calibration import Calibration, GraphSession, Scorer, run_graph
from onnxcompress.calibration import runner as R
from onnxcompress.data import Dataset
from onnxcompress.metrics import Metric
from tests.passes import small_nets as S


def test_session_means_match_numpy_and_onnxruntime() -> None:
    g, data = S.graph(), S.feeds(300)
    means = GraphSession(g, ["input", "r1", "logits"]).means(Dataset(data, None, batch=64))
    np.testing.assert_allclose(means["input"], data["input"].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(means["logits"], run_graph(g, data).mean(0), rtol=1e-4, atol=1e-5)
    assert means["r1"].shape == (8, 12, 12)


def test_variable_initializers_follow_the_graph_and_overrides() -> None:
    g, data = S.graph(), S.feeds(50)
    sess = GraphSession(g, ["logits"], variable=["fc1_b"])
    bias = g.tensors()["fc1_b"]
    new = (np.asarray(bias.values) + 1.0).astype(np.float32)
    by_override = sess.means(Dataset(data, None), {"fc1_b": new})["logits"]
    bias.values = new  # the same session sees the graph's new value
    np.testing.assert_allclose(sess.means(Dataset(data, None))["logits"], by_override, rtol=1e-6)
    np.testing.assert_allclose(by_override, run_graph(g, data).mean(0), rtol=1e-5, atol=1e-5)


def test_snapshots_are_shared_frozen_and_cache_their_captures(monkeypatch) -> None:
    g = S.graph()
    cal = Calibration(Dataset(S.feeds(64), None), "logits")
    snap = cal.snapshot(g)
    assert cal.snapshot(g) is snap  # the same graph: the same snapshot
    built = []
    real = R.GraphSession.__init__
    monkeypatch.setattr(R.GraphSession, "__init__",
                        lambda self, *a, **k: (built.append(1), real(self, *a, **k))[1])
    first = snap.means(cal.data, ["r1", "logits"])
    again = snap.means(cal.data, ["r1"])
    out = snap.outputs(cal.data, "logits")
    assert len(built) == 1  # one capture served all three requests
    np.testing.assert_array_equal(again["r1"], first["r1"])
    w = g.tensors()["fc1_w"]
    w.values = np.zeros_like(w.values)  # the live graph changes, the snapshot does not
    np.testing.assert_array_equal(snap.outputs(cal.data, "logits"), out)
    assert cal.snapshot(g) is not snap


def test_scorer_builds_one_session_per_structure() -> None:
    g, data = S.graph(), Dataset(S.feeds(80), None)
    cal = Calibration(data, "logits")
    score = cal.scorer(cal.snapshot(g))
    assert score(g) == 100.0  # agreement with itself, in points
    w = g.tensors()["fc1_w"]
    for scale in (0.5, 0.0):  # weight changes: fed to the same session
        w.values = (np.asarray(w.values) * scale).astype(np.float32)
        got = score(g)
        want = 100 * (run_graph(g, data.feeds).argmax(1) == score.reference.argmax(1)).mean()
        assert got == pytest.approx(want)
    assert score.sessions == 1
    g.nodes[-1].name = "renamed"  # a structural change: a new session
    score(g)
    assert score.sessions == 2


def test_split_is_fixed_and_labels_score_accuracy() -> None:
    feeds = S.feeds(400)
    labels = np.arange(400) % 10
    cal = Calibration(Dataset(feeds, labels), "logits", Metric.TOP1)
    fit, held = cal.split()
    assert cal.split() == (fit, held) and cal.can_split()
    np.testing.assert_array_equal(held.feeds["input"], feeds["input"][1::2])
    np.testing.assert_array_equal(fit.labels, labels[0::2])
    g = S.graph()
    score = cal.scorer(cal.snapshot(g), held)
    want = 100 * (run_graph(g, held.feeds).argmax(1) == labels[1::2]).mean()
    assert score(g) == pytest.approx(want)


def test_a_scorer_needs_a_target() -> None:
    with pytest.raises(ValueError, match="needs the reference"):
        Scorer(Dataset(S.feeds(4), None), "logits", Metric.COSINE)
    with pytest.raises(ValueError, match="needs labels"):
        Scorer(Dataset(S.feeds(4), None), "logits", Metric.TOP1)
