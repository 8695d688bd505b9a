"""Run a list of steps over a graph; a failure names the step and the steps before it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx_graphsurgeon as gs

from . import registry
from .calibration import Calibration
from .errors import BadInputError, OnnxCompressError, PassError, RecipeError
from .metrics import drop
from .passes.base import Context, PassReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    name: str  # a registered pass
    config: Any  # that pass's Config

    @property
    def stage(self) -> str:
        return registry.get(self.name).STAGE


def with_budget(step: Step, budget: float | None) -> Step:
    """Hand the run's accuracy budget to a pass that plans against it (its BUDGET_KEY), unless
    the recipe set that key itself."""
    key = registry.get(step.name).BUDGET_KEY
    if budget is None or key is None or getattr(step.config, key) is not None:
        return step
    return Step(step.name, dataclasses.replace(step.config, **{key: budget}))


def check_order(steps: list[Step]) -> None:
    """A pass that declares RUNS_LAST (early_exit: its branches hide the weights from weight
    passes) must be the last step."""
    for i, step in enumerate(steps[:-1]):
        if getattr(registry.get(step.name), "RUNS_LAST", False):
            after = ", ".join(s.name for s in steps[i + 1:])
            raise RecipeError(
                f"step '{step.name}' must be the last pass: later passes cannot see the weights "
                f"inside its branches (found after it: {after}); put those steps before it "
                "(the container, .onnxc, is the output format, not a step)")


def run(graph: gs.Graph, steps: list[Step], ctx: Context,
        after_step: Callable[[Step, PassReport], None] | None = None,
        budget: float | None = None) -> list[PassReport]:
    """Apply `steps` in order to `graph` (in place); return their reports.

    `budget` is the run's one accuracy budget, shared by the passes that steer by it: each gets
    an equal part of what the passes before it left, so a pass that spends less leaves more to
    the next. What is left is measured: the drop of the model so far against the original on
    the held-out calibration samples, so that a pass that does not steer by the budget (cluster
    at fixed bits) is charged too; without calibration data, the steering passes' own measured
    drops are added up instead."""
    check_order(steps)
    reports: list[PassReport] = []
    history: list[str] = []
    left = budget
    measure = _drop_meter(graph, ctx.calibration) if budget is not None else None
    for i, step in enumerate(steps):
        takers = sum(_takes_budget(s) for s in steps[i:])
        ctx.progress(f"{step.name}: running")
        try:  # measuring what is left runs the model so far: its failure is this step's
            if measure is not None and history and _takes_budget(step):
                left = min(budget, max(budget - measure(graph), 0.0))
            step = with_budget(step, None if left is None else left / max(takers, 1))
            report = registry.get(step.name).run(graph, step.config, ctx)
        except BadInputError as e:
            before = ", ".join(history) or "none"
            raise type(e)(f"step '{step.name}': {e} (steps run before it: {before}"
                          f"{_budget_left(budget, left)})") from e
        except OnnxCompressError:
            raise
        except Exception as e:
            raise PassError(step.name, history, e) from e
        graph.cleanup().toposort()
        log.info("%s: modified=%s", step.name, report.modified)
        if left is not None and report.spent is not None:
            given = getattr(step.config, registry.get(step.name).BUDGET_KEY)
            report.notes.append(f"spent {report.spent:.2f} of the {given:.3g} points of budget "
                                f"it was given{_budget_left(budget, left)}")
            left = max(left - report.spent, 0.0)
        reports.append(report)
        history.append(step.name)
        if after_step is not None:
            after_step(step, report)
    return reports


def _drop_meter(graph: gs.Graph, calibration: Calibration | None
                ) -> Callable[[gs.Graph], float] | None:
    """drop(graph): the metric's drop of `graph` against `graph` as it is now, on the held-out
    calibration samples (the scored output must still be there)."""
    if calibration is None:
        return None
    held = calibration.split()[1] if calibration.can_split() else calibration.data
    reference = calibration.snapshot(graph)  # a copy: `graph` changes in place

    def measured(current: gs.Graph) -> float:
        scorer = calibration.scorer(reference, held)  # the reference outputs: snapshot-cached
        return drop(calibration.metric, scorer.outputs(current), scorer.reference, held.labels,
                    held.targets)
    return measured


def _takes_budget(step: Step) -> bool:
    key = registry.get(step.name).BUDGET_KEY
    return key is not None and getattr(step.config, key) is None


def _budget_left(budget: float | None, left: float | None) -> str:
    if budget is None or left is None or left >= budget:
        return ""
    return f"; earlier passes spent {budget - left:.2f} of the run's {budget:g}-point budget"
