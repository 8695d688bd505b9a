"""Small helpers the test modules share."""

from __future__ import annotations

import numpy as np

from onnxcompress.calibration import Calibration
from onnxcompress.data import Dataset
from onnxcompress.metrics import Metric
from onnxcompress.passes.base import Context


def calib_context(feeds: dict[str, np.ndarray], output: str = "logits",
                  labels: np.ndarray | None = None, progress=lambda m: None) -> Context:
    """A pass context over calibration `feeds`, scoring the graph output `output` by top-1
    accuracy with labels, else by top-1 agreement with the graph as a pass finds it."""
    metric = Metric.TOP1 if labels is not None else Metric.AGREEMENT
    return Context(Calibration(Dataset(dict(feeds), labels), output, metric), progress)
