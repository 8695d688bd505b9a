"""Run a list of steps over a graph; a failure names the step and the steps before it."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx_graphsurgeon as gs

from .errors import BadInputError, OnnxCompressError, PassError
from .passes.base import Context, PassReport

log = logging.getLogger(__name__)

# pass name -> module implementing `Config` and `run(graph, cfg, ctx)`
PASS_MODULES: dict[str, str] = {
    "prune": "onnxcompress.passes.prune",
    "cluster": "onnxcompress.passes.cluster",
    "binarize": "onnxcompress.passes.binarize",
}


def pass_module(name: str):
    if name not in PASS_MODULES:
        raise BadInputError(f"unknown pass '{name}'; valid passes: {', '.join(PASS_MODULES)}")
    return importlib.import_module(PASS_MODULES[name])


@dataclass(frozen=True)
class Step:
    name: str  # a key of PASS_MODULES
    config: Any  # the pass module's Config


def run(graph: gs.Graph, steps: list[Step], ctx: Context,
        after_step: Callable[[Step, PassReport], None] | None = None) -> list[PassReport]:
    """Apply `steps` in order to `graph` (in place); return their reports."""
    reports: list[PassReport] = []
    history: list[str] = []
    for step in steps:
        ctx.progress(f"{step.name}: running")
        try:
            report = pass_module(step.name).run(graph, step.config, ctx)
        except BadInputError as e:
            before = ", ".join(history) or "none"
            raise type(e)(f"step '{step.name}': {e} (steps run before it: {before})") from e
        except OnnxCompressError:
            raise
        except Exception as e:
            raise PassError(step.name, history, e) from e
        graph.cleanup().toposort()
        log.info("%s: modified=%s", step.name, report.modified)
        reports.append(report)
        history.append(step.name)
        if after_step is not None:
            after_step(step, report)
    return reports
