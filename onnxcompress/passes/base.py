"""What every pass shares: its report, and the calibration context it may use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs


@dataclass
class PassReport:
    """What a pass did. `per_tensor` maps a weight name to facts about it (sparsity, bits …)."""

    name: str
    modified: bool
    per_tensor: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Calibration data and helpers a pass may use; every field is optional.

    `calib` maps input names to arrays (first axis = samples). `labels` are top-1 class ids for
    `calib`, or None. `score(graph)` runs the graph on `calib` and returns top-1 accuracy
    (labels) or top-1 agreement with the uncompressed model (no labels), in [0, 1].
    """

    calib: dict[str, np.ndarray] | None = None
    labels: np.ndarray | None = None
    score: Callable[[gs.Graph], float] | None = None
    progress: Callable[[str], None] = lambda msg: None
