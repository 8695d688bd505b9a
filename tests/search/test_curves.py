"""Sensitivity curves measured at each layer's own output (for models too expensive to run
after every rung): anchored on real end-to-end runs, chosen only when the full curves would
cost too much (a plan built on them: tests/search/test_search.py)."""

from __future__ import annotations

import pytest

from onnxcompress.graph import iter_weights
from onnxcompress.graph.convert import to_graph
from onnxcompress.normalize import normalize
from onnxcompress.search import curves, space
from tests.conftest import tiny_cnn, tiny_data
from tests.helpers import calib_context


def _measure(model, data, budget: float = 5.0) -> list[curves.Curve]:
    cal = calib_context(data).calibration
    fit, held = cal.split()
    graph = to_graph(model)
    return curves.measure(graph, cal.snapshot(graph), fit, held, cal.output, cal.metric, budget)


def test_local_curves_are_chosen_only_when_the_full_ones_cost_too_much(monkeypatch) -> None:
    graph = to_graph(normalize(tiny_cnn()))
    weights = iter_weights(graph)
    ladders = {w.tensor.name: (space.SPARSITIES[1:], space.BITS[1:]) for w in weights}
    held = calib_context(tiny_data(n=300, labels=False)).calibration.data
    samples, local = curves.plan_samples(graph, weights, ladders, held)
    assert not local and samples == curves.MAX_CURVE_SAMPLES  # a tiny model: every rung run
    monkeypatch.setattr(curves, "FULL_CURVES_FLOPS", 0.0)
    assert curves.plan_samples(graph, weights, ladders, held) == (curves.MIN_PROBE_SAMPLES, True)


def test_local_curves_are_anchored_on_an_end_to_end_run_per_ladder(monkeypatch) -> None:
    model = normalize(tiny_cnn())
    data = tiny_data(n=600, seed=3, labels=False)
    # both modes on the same held-out samples, so the anchors can be compared exactly
    for name in ("MIN_CURVE_SAMPLES", "MAX_CURVE_SAMPLES", "MIN_PROBE_SAMPLES"):
        monkeypatch.setattr(curves, name, 32)
    full = {c.weight: c for c in _measure(model, data, budget=1e9)}
    monkeypatch.setattr(curves, "FULL_CURVES_FLOPS", 0.0)
    local = _measure(model, data)
    assert [c.weight for c in local] == list(full)
    for c in local:
        assert c.sizes == full[c.weight].sizes  # prices do not depend on the mode
        for mine, theirs in ((c.prune, full[c.weight].prune), (c.cluster, full[c.weight].cluster)):
            assert set(mine) == set(theirs)  # every rung, none cut off by a ladder's stop
            assert any(mine[r][0] > 0 and mine[r] == pytest.approx(theirs[r], rel=1e-9)
                       for r in mine)  # the rung run end to end
            changes = [mine[r][0] for r in sorted(mine, key=lambda r: theirs[r][0])]
            assert changes[0] == 0.0 and all(d >= 0 for d in changes)

