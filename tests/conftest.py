"""Shared fixtures: tiny seeded models written as ONNX text, and data files for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "models"

TINY_CNN = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N, 1, 8, 8] input) => (float[N, 4] logits) {
    c1 = Conv <pads = [1, 1, 1, 1]> (input, w1, b1)
    bn = BatchNormalization (c1, bn_s, bn_b, bn_m, bn_v)
    r1 = Relu (bn)
    p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
    f = Flatten (p1)
    h = Gemm <transB = 1> (f, w2, b2)
    r2 = Relu (h)
    logits = Gemm <transB = 1> (r2, w3, b3)
}
"""


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv+BN → pool → two Gemms; seeded weights as initializers."""
    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(TINY_CNN)
    weights = {
        "w1": rng.normal(0, 0.5, (6, 1, 3, 3)), "b1": rng.normal(0, 0.1, 6),
        "bn_s": rng.uniform(0.5, 1.5, 6), "bn_b": rng.normal(0, 0.1, 6),
        "bn_m": rng.normal(0, 0.1, 6), "bn_v": rng.uniform(0.5, 1.5, 6),
        "w2": rng.normal(0, 0.2, (32, 96)), "b2": rng.normal(0, 0.1, 32),
        "w3": rng.normal(0, 0.3, (4, 32)), "b3": rng.normal(0, 0.1, 4),
    }
    model.graph.initializer.extend(
        numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_data(n: int = 64, seed: int = 1, labels: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = {"input": rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32)}
    if labels:
        d["labels"] = rng.integers(0, 4, n).astype(np.int64)
    return d


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), str(p))
    return p


@pytest.fixture
def tiny_data_path(tmp_path: Path) -> Path:
    p = tmp_path / "data.npz"
    np.savez(p, **tiny_data())
    return p
