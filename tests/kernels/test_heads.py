"""Exit heads in numpy: pooling equal to ONNX's AveragePool, ridge and soft-target fits,
confidence scores."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxcompress.kernels import heads as H


def _ort_pool(x: np.ndarray, grid: int) -> np.ndarray:
    (kh, sh), (kw, sw) = H.grid_geometry(x.shape[2], grid), H.grid_geometry(x.shape[3], grid)
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[kh, kw], strides=[sh, sw])
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, list(x.shape))], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0].reshape(len(x), -1)


@pytest.mark.parametrize("size,grid", [(14, 4), (7, 4), (28, 4), (3, 2), (5, 5), (9, 2)])
def test_pooling_is_onnx_average_pool(size, grid):
    x = np.random.default_rng(size).normal(size=(3, 4, size, size)).astype(np.float32)
    kernel, stride = H.grid_geometry(size, grid)
    assert (size - kernel) // stride + 1 == min(grid, size)
    np.testing.assert_allclose(H.pool_features(x, grid), _ort_pool(x, grid), rtol=1e-5,
                               atol=1e-6)


def test_global_and_flat_features():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(H.pool_features(x, 1), x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-7)
    flat = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert H.pool_features(flat, 4) is not None and (H.pool_features(flat, 4) == flat).all()


@pytest.mark.parametrize("n,d", [(400, 30), (25, 80)])  # primal and kernel forms
def test_ridge_recovers_a_linear_teacher(n, d):
    rng = np.random.default_rng(1)
    f = rng.normal(2.0, 3.0, size=(n, d)).astype(np.float32)
    z = f @ rng.normal(size=(d, 4)) + np.array([1.0, -2.0, 0.5, 0.0])
    head = H.fit_logits(f, z)
    assert head.weight.shape == (d, 4) and head.weight.dtype == np.float32
    assert head.lam == H.LAM_GRID[0]  # noise-free: GCV takes the smallest ridge
    np.testing.assert_allclose(head.logits(f), z, atol=1e-2 * np.abs(z).max())


def test_ridge_shrinks_on_noise():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(200, 50))
    z = rng.normal(size=(200, 3))  # unrelated to the features
    assert H.fit_logits(f, z).lam > 0.01


def test_soft_targets_match_the_teacher_better_than_chance():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(600, 20))
    teacher = 3 * np.tanh(f @ rng.normal(size=(20, 5)))  # a nonlinear teacher
    head = H.fit_soft(f, teacher, temperature=2.0)
    agree = (head.logits(f).argmax(1) == teacher.argmax(1)).mean()
    assert head.method == "soft" and agree > 0.8
    labels = teacher.argmax(1)
    mixed = H.fit_soft(f, teacher, 2.0, labels=labels, label_weight=0.5)
    assert (mixed.logits(f).argmax(1) == labels).mean() > 0.8


def test_lbfgs_minimizes_a_quadratic():
    a = np.diag([1.0, 10.0, 100.0])
    b = np.array([1.0, 2.0, 3.0])
    x = H.lbfgs(lambda v: (0.5 * v @ a @ v - b @ v, a @ v - b), np.zeros(3), 100)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-4)


def test_confidence_scores():
    z = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]])
    np.testing.assert_allclose(H.confidence(z, "max-prob")[0], 0.25)
    np.testing.assert_allclose(H.confidence(z, "entropy")[0], -np.log(4))
    np.testing.assert_allclose(H.confidence(z, "margin")[[0, 2]], [0.0, 0.0], atol=1e-12)
    for c in ("max-prob", "entropy", "margin"):
        s = H.confidence(z, c)
        assert s[1] > s[0] and s[1] > s[2]
    with pytest.raises(ValueError, match="unknown criterion"):
        H.confidence(z, "nope")


def test_no_onnx_import():
    from pathlib import Path

    source = Path(H.__file__).read_text()  # kernels are pure numpy
    assert "import onnx" not in source and "from onnx" not in source and onnx is not None


def test_head_shape_prefers_windows_that_do_not_overlap():
    grids = (8, 7, 6, 4, 3, 2, 1)
    stem = H.head_shape((32, 14, 14), 2048, grids)  # 7x7 cells of 2x2 windows
    assert stem.cells == (7, 7) and stem.pool == ((2, 2), (2, 2)) and stem.features == 1568
    assert stem.reads == 32 * 14 * 14
    wide = H.head_shape((64, 7, 7), 2048, grids)  # nothing divides 7 within 2048 features
    assert wide.cells == (4, 4) and wide.pool == ((4, 4), (1, 1)) and wide.features == 1024
    assert H.head_shape((8, 6, 6), 2048, grids).pool is None  # already small: read as it is
    assert H.head_shape((16,), 2048, grids).features == 16
    assert H.head_shape((512, 7, 7), 256, grids).pool == "global"
