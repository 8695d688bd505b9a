"""Small helpers the test modules share."""

from __future__ import annotations

import numpy as np

from onnxcompress.calibration import Calibration
from onnxcompress.data import Dataset
from onnxcompress.passes.base import Context


def calib_context(feeds: dict[str, np.ndarray], output: str = "logits",
                  labels: np.ndarray | None = None, progress=lambda m: None) -> Context:
    """A pass context over calibration `feeds`, scoring the graph output `output`."""
    return Context(Calibration(Dataset(dict(feeds), labels), output), progress)
