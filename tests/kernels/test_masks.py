"""Magnitude masks: exact counts, global threshold semantics, positive zeros."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.kernels.masks import (
    apply_mask,
    global_threshold,
    magnitude_mask,
    prune_count,
    sparsity_of,
    threshold_mask,
)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("shape", [(7,), (13, 17), (8, 3, 5, 5)])
def test_mask_prunes_exact_count(sparsity: float, shape: tuple[int, ...]) -> None:
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    keep = magnitude_mask(w, sparsity)
    assert keep.shape == w.shape
    assert (~keep).sum() == round(sparsity * w.size)


def test_mask_keeps_the_largest_magnitudes() -> None:
    w = np.random.default_rng(1).normal(size=(40, 50)).astype(np.float32)
    keep = magnitude_mask(w, 0.8)
    assert np.abs(w[keep]).min() > np.abs(w[~keep]).max()


def test_ties_and_existing_zeros_still_give_exact_count() -> None:
    w = np.zeros(100, dtype=np.float32)
    w[:30] = 0.5
    w[30:40] = -0.5
    w[40:45] = 2.0
    keep = magnitude_mask(w, 0.6)  # 55 zeros then ties at 0.5: 5 of the 40 ties pruned
    assert (~keep).sum() == 60
    assert keep[40:45].all()
    assert not keep[45:].any()  # the zeros go first
    assert not keep[:5].any() and keep[5:45].all()  # ties broken by position


def test_bad_ratio_is_rejected() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_mask(np.ones(3), 1.5)
    assert prune_count(10, 0.25) == 2  # round half to even: 2.5 -> 2


def test_global_threshold_pools_all_layers() -> None:
    rng = np.random.default_rng(2)
    small = rng.normal(0, 0.01, 10_000).astype(np.float32)  # a wide FC layer
    large = rng.normal(0, 1.0, 1_000).astype(np.float32)  # a conv layer
    t = global_threshold([small, large], 0.8)
    keeps = [threshold_mask(w, t) for w in (small, large)]
    pruned = sum((~k).sum() for k in keeps)
    assert pruned == round(0.8 * 11_000)  # continuous values: no ties
    # one threshold: everything pruned is <= t < everything kept, in every layer
    for w, k in zip((small, large), keeps):
        assert np.abs(w[~k]).max(initial=0) <= t < np.abs(w[k]).min()
    assert (
        sparsity_of(apply_mask(small, keeps[0])) > 0.85 > sparsity_of(apply_mask(large, keeps[1]))
    )


def test_global_threshold_zero_prunes_nothing() -> None:
    w = np.zeros(5, dtype=np.float32)
    assert threshold_mask(w, global_threshold([w], 0.0)).all()


def test_apply_mask_writes_positive_zero() -> None:
    w = -np.arange(1, 9, dtype=np.float32)
    out = apply_mask(w, magnitude_mask(w, 0.5))
    assert (out == 0).sum() == 4
    assert not np.signbit(out[out == 0]).any()
    assert out.dtype == w.dtype
    with pytest.raises(ValueError, match="shape"):
        apply_mask(w, np.ones(3, dtype=bool))
