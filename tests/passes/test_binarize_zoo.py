"""The zoo's network trained binary (models/binary_xnor.onnx) lowers without changing outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.conftest import ZOO

from .binary_nets import binarize, run_ort

MODEL = ZOO / "binary_xnor.onnx"


@pytest.mark.skipif(not MODEL.is_file(), reason="models/binary_xnor.onnx not present")
@pytest.mark.parametrize("target", ["native", "portable"])
def test_zoo_binary_net_lowered_unchanged(target: str):
    x = np.load(ZOO / "data" / "eval.npz")["input"][:200]
    model = onnx.load(str(MODEL))
    before = run_ort(model, x, optimize=True)
    lowered, rep = binarize(model, mode="xnor", target=target, layers="auto")
    assert len(rep.per_tensor) == 3 and all(f["trained_binary"] for f in rep.per_tensor.values())
    after = run_ort(lowered, x)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-4)
    assert (after.argmax(1) == before.argmax(1)).all()
