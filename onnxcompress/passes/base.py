"""The contract every pass keeps: the `Pass` protocol, its report, and its context.

A pass is one module in `onnxcompress/passes/` that defines the names of `Pass`; the registry
(`onnxcompress.registry`) finds it there, and the pipeline, recipes, the CLI's stage names,
budget handling and the report all follow from it. Nothing else needs editing to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import onnx_graphsurgeon as gs

from ..calibration import Calibration


@dataclass
class PassReport:
    """What a pass did. `per_tensor` maps a weight (or layer) name to facts about it:
    sparsity, bits, the sensitivity curve it was chosen from …; they reach the JSON report."""

    name: str
    modified: bool
    per_tensor: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # False: no setting of the pass meets the accuracy budget, so it left the graph unchanged
    # (the run then fails its budget, as when the drop exceeds it)
    budget_met: bool | None = None
    # the drop (in the budget's units) this pass measured against its own input, when it
    # steered by the budget: the pipeline leaves later passes only what remains
    spent: float | None = None


@dataclass
class Context:
    """What a run gives every pass: the calibration service (None without calibration data)
    and a progress callback for long work."""

    calibration: Calibration | None = None
    progress: Callable[[str], None] = lambda msg: None


@runtime_checkable
class Pass(Protocol):
    """A pass module. `Config` is a frozen dataclass whose fields are the recipe keys (str
    values become the field's enum); `run` changes the graph in place."""

    NAME: str  # recipe `pass` value and CLI command
    STAGE: str  # the report's row after this pass ("pruned")
    BUDGET_KEY: str | None  # Config field that receives --max-accuracy-drop, if any
    EMITS_OPS: frozenset[str]  # op types it may add, beyond graph.SAFE_OPS
    Config: type

    def run(self, graph: gs.Graph, cfg: Any, ctx: Context) -> PassReport: ...
