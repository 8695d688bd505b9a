"""The registry: every pass module keeping the Pass protocol, and what follows from it."""

from __future__ import annotations

import dataclasses

import pytest

from onnxcompress import registry
from onnxcompress.errors import RecipeError
from onnxcompress.passes import binarize, cluster, prune
from onnxcompress.passes.base import Pass
from onnxcompress.pipeline import Step, with_budget
from onnxcompress.recipe import make_config, steps_from_dicts


def test_the_passes_are_found_and_helpers_are_not() -> None:
    found = registry.all_passes()
    assert {"prune", "cluster", "binarize"} <= set(found)
    assert all(isinstance(p, Pass) for p in found.values())
    assert "prune_search" not in found and "binarize_forms" not in found
    assert registry.get("prune") is prune and registry.get("cluster").STAGE == "clustered"
    with pytest.raises(RecipeError, match="unknown pass 'prun'; valid passes: .*prune"):
        registry.get("prun")
    assert "XnorConv" in registry.known_ops()


def test_recipe_keys_are_the_config_fields() -> None:
    for p in (prune, cluster, binarize):
        fields = [f.name for f in dataclasses.fields(p.Config)]
        with pytest.raises(RecipeError, match="valid keys: " + ", ".join(fields)):
            make_config(p.NAME, {"no_such_key": 1})
    (step,) = steps_from_dicts([{"pass": "prune", "mode": "global", "sparsity": 0.5}], "test")
    assert step.config.mode is prune.Mode.GLOBAL and step.stage == "pruned"


def test_the_budget_goes_to_the_key_a_pass_names() -> None:
    step = Step("prune", prune.Config())
    assert with_budget(step, 1.5).config.max_drop == 1.5
    assert with_budget(Step("prune", prune.Config(max_drop=0.2)), 1.5).config.max_drop == 0.2
    assert with_budget(Step("cluster", cluster.Config()), 1.5).config == cluster.Config()


def test_a_run_spends_one_budget_across_its_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each budget-steered pass gets what the passes before it left, not the whole budget."""
    import onnx_graphsurgeon as gs

    from onnxcompress import pipeline
    from onnxcompress.passes.base import Context, PassReport

    given: list[float | None] = []

    @dataclasses.dataclass(frozen=True)
    class Config:
        max_drop: float | None = None

    class Steered:
        NAME = STAGE = "steered"
        BUDGET_KEY, EMITS_OPS = "max_drop", frozenset()
        spent = 0.3

        @staticmethod
        def run(graph, cfg, ctx):
            given.append(cfg.max_drop)
            return PassReport("steered", modified=True, spent=Steered.spent)

    Steered.Config = Config
    monkeypatch.setattr(pipeline.registry, "get", lambda name: Steered)
    steps = [Step("steered", Config()), Step("steered", Config()), Step("steered", Config()),
             Step("steered", Config(max_drop=0.7))]  # a recipe's own key wins
    reports = pipeline.run(gs.Graph(), steps, Context(), budget=0.9)
    # an equal share of what is left among the steps still to take one: 0.9 / 3, then
    # (0.9 - 0.3) / 2, then what remains; the recipe's own key is kept
    assert given == pytest.approx([0.3, 0.3, 0.3, 0.7])
    assert "spent 0.30 of the 0.3 points" in reports[1].notes[-1]
    assert "earlier passes spent 0.30 of the run's 0.9-point budget" in reports[1].notes[-1]
    given.clear()
    Steered.spent = 0.0
    pipeline.run(gs.Graph(), steps[:3], Context(), budget=0.9)  # nothing spent: more for later
    assert given == pytest.approx([0.3, 0.45, 0.9])
    given.clear()
    pipeline.run(gs.Graph(), steps[:2], Context(), budget=None)
    assert given == [None, None]


def test_what_is_left_of_the_budget_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that does not steer by the budget (cluster at fixed bits) still costs accuracy:
    the next steering pass gets the budget minus the drop measured on the model so far."""
    import numpy as np
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    from onnxcompress import pipeline
    from onnxcompress.metrics import Metric, drop
    from onnxcompress.passes.base import PassReport
    from tests.conftest import tiny_cnn, tiny_data
    from tests.helpers import calib_context

    given: list[float | None] = []

    @dataclasses.dataclass(frozen=True)
    class Config:
        max_drop: float | None = None

    class Blunt:  # flips and halves every other hidden weight, ignoring any budget
        NAME = STAGE = "blunt"
        BUDGET_KEY, EMITS_OPS = None, frozenset()

        @staticmethod
        def run(graph, cfg, ctx):
            w = graph.tensors()["w2"]
            w.values = (w.values * np.where(np.arange(w.values.size) % 2, 1, -0.5)
                        .reshape(w.values.shape)).astype(np.float32)
            return PassReport("blunt", modified=True)

    class Steered:
        NAME = STAGE = "steered"
        BUDGET_KEY, EMITS_OPS = "max_drop", frozenset()

        @staticmethod
        def run(graph, cfg, ctx):
            given.append(cfg.max_drop)
            return PassReport("steered", modified=False, spent=0.0)

    Blunt.Config = Steered.Config = Config
    monkeypatch.setattr(pipeline.registry, "get", {"blunt": Blunt, "steered": Steered}.get)
    model, data = tiny_cnn(), tiny_data(64, labels=False)
    graph = gs.import_onnx(model)
    pipeline.run(graph, [Step("blunt", Config()), Step("steered", Config())],
                 calib_context({"input": data["input"]}), budget=100.0)
    # the drop of the blunted model, measured here with ONNX Runtime on the original file
    blunted = gs.export_onnx(graph)
    outs = [ort.InferenceSession(m.SerializeToString()).run(None, data)[0]
            for m in (model, blunted)]
    expected = drop(Metric.AGREEMENT, outs[1], outs[0])
    assert expected > 1  # the blunting must cost something for the test to mean anything
    assert given == pytest.approx([100.0 - expected])
