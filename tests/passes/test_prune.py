"""The prune pass: ratios, patterns, global threshold, sensitivity scan, bias correction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from onnxcompress import calibration as C
from onnxcompress.errors import BadInputError
from onnxcompress.kernels.masks import magnitude_mask
from onnxcompress.passes import prune, prune_search
from onnxcompress.passes.base import Context
from tests.passes import small_nets as S

NO_DATA = Context()


def sparsities(g) -> dict[str, float]:
    w = S.weights_of(g)
    return {n: float((w[n] == 0).mean()) for n in S.WEIGHTS}


def test_config_keys_enums_and_validation() -> None:
    assert {
        "mode",
        "sparsity",
        "per_layer",
        "tolerance",
        "max_drop",
        "bias_correction",
        "protect_first_last",
    } <= {f.name for f in dataclasses.fields(prune.Config)}
    assert prune.Config(mode="global").mode is prune.Mode.GLOBAL
    with pytest.raises(ValueError, match="sparsity"):
        prune.Config(sparsity=1.2)
    with pytest.raises(ValueError, match="per_layer"):
        prune.Config(per_layer={"*": -0.1})
    with pytest.raises(ValueError, match="sensitivity"):
        prune.Config(mode="sensitivity", sparsity=0.5)
    with pytest.raises(ValueError):
        prune.Config(mode="random")


def test_uniform_hits_the_ratio_and_leaves_biases_alone() -> None:
    g = S.graph()
    before = S.weights_of(g)
    report = prune.run(g, prune.Config(sparsity=0.8, bias_correction=False), NO_DATA)
    after = S.weights_of(g)
    for name in S.WEIGHTS:
        assert (after[name] == 0).sum() == round(0.8 * before[name].size)
        kept = after[name] != 0
        np.testing.assert_array_equal(after[name][kept], before[name][kept])
        assert not np.signbit(after[name][~kept]).any()  # +0.0 exactly
        assert report.per_tensor[name]["sparsity"] == pytest.approx(0.8, abs=0.01)
    for name in S.BIASES:
        np.testing.assert_array_equal(after[name], before[name])
    assert report.modified and report.per_tensor["fc1_w"]["layer"] == "Gemm_6"
    assert report.per_tensor["conv1_w"]["kind"] == "conv"
    out = C.run_graph(g, S.feeds(8))  # still runs on onnxruntime
    assert out.shape == (8, 10) and np.isfinite(out).all()
    S.export(g)


def test_sparsity_zero_is_the_identity() -> None:
    g, data = S.graph(), S.feeds(64)
    want = C.run_graph(g, data)
    ctx = S.context(g, 64)
    report = prune.run(g, prune.Config(sparsity=0.0), ctx)
    np.testing.assert_array_equal(C.run_graph(g, data), want)
    assert not report.modified
    assert sorted(t for t in S.weights_of(g)) == sorted(S.WEIGHTS + S.BIASES)  # no bias added


def test_per_layer_patterns_with_default() -> None:
    g = S.graph()
    table = {"Conv_*": 0.5, "fc1_w": 0.9, "*": 0.7}  # exact weight name beats the default
    prune.run(g, prune.Config(per_layer=table, bias_correction=False), NO_DATA)
    got = sparsities(g)
    assert got["conv1_w"] == pytest.approx(0.5, abs=0.02)
    assert got["conv2_w"] == pytest.approx(0.5, abs=0.01)
    assert got["fc1_w"] == pytest.approx(0.9, abs=0.001)
    assert got["fc2_w"] == pytest.approx(0.7, abs=0.01)


def test_layers_not_listed_are_not_pruned() -> None:
    g = S.graph()
    prune.run(g, prune.Config(per_layer={"Gemm_6": 0.6}, bias_correction=False), NO_DATA)
    got = sparsities(g)
    assert got["fc1_w"] == pytest.approx(0.6, abs=0.001)
    assert got["conv1_w"] == got["conv2_w"] == got["fc2_w"] == 0.0


def test_unknown_pattern_is_an_error_listing_layers() -> None:
    with pytest.raises(BadInputError, match="'conv9' matches no layer; layers are: Conv_0"):
        prune.run(S.graph(), prune.Config(per_layer={"conv9": 0.5}), NO_DATA)
    with pytest.raises(BadInputError, match="matches no layer"):
        prune.run(S.graph(), prune.Config(sparsity=0.5, exclude=("nope*",)), NO_DATA)


def test_exclude_and_protect_first_last() -> None:
    g = S.graph()
    prune.run(
        g,
        prune.Config(
            sparsity=0.6, exclude=("conv2_w",), protect_first_last=True, bias_correction=False
        ),
        NO_DATA,
    )
    got = sparsities(g)
    assert got["conv1_w"] == got["fc2_w"] == got["conv2_w"] == 0.0
    assert got["fc1_w"] == pytest.approx(0.6, abs=0.001)


def test_global_mode_uses_one_threshold() -> None:
    g = S.graph()
    before = S.weights_of(g)
    report = prune.run(
        g, prune.Config(mode="global", sparsity=0.75, bias_correction=False), NO_DATA
    )
    after = S.weights_of(g)
    t = report.per_tensor["fc1_w"]["threshold"]
    total = sum(before[n].size for n in S.WEIGHTS)
    assert sum((after[n] == 0).sum() for n in S.WEIGHTS) == round(0.75 * total)
    for n in S.WEIGHTS:
        pruned, kept = before[n][after[n] == 0], before[n][after[n] != 0]
        assert np.abs(pruned).max(initial=0) <= t < np.abs(kept).min()
    # the wide FC layer has the smallest weights: global magnitude prunes it hardest
    got = sparsities(g)
    assert got["fc1_w"] > got["conv1_w"]


def test_global_mode_keeps_pinned_layers_out_of_the_pool() -> None:
    g = S.graph()
    prune.run(
        g,
        prune.Config(mode="global", sparsity=0.5, per_layer={"Conv_0": 0.0}, bias_correction=False),
        NO_DATA,
    )
    assert sparsities(g)["conv1_w"] == 0.0


def test_auto_without_data_falls_back_with_a_warning() -> None:
    g = S.graph()
    report = prune.run(g, prune.Config(), NO_DATA)
    assert report.notes[0] == "mode: uniform"
    assert any(n.startswith("WARNING") and "fallback sparsity 0.5" in n for n in report.notes)
    assert all(
        s == pytest.approx(prune.FALLBACK_SPARSITY, abs=0.02) for s in sparsities(g).values()
    )
    with pytest.raises(BadInputError, match="calibration"):
        prune.run(S.graph(), prune.Config(mode="sensitivity"), NO_DATA)


def output_mean_shift(g, data, want: np.ndarray) -> float:
    return float(np.abs(C.run_graph(g, data).mean(0) - want).max())


def test_bias_correction_reduces_the_output_mean_shift() -> None:
    data = S.feeds(400)
    g0 = S.graph()
    want = C.run_graph(g0, data).mean(0)
    plain, corrected = S.graph(), S.graph()
    prune.run(plain, prune.Config(sparsity=0.8, bias_correction=False), NO_DATA)
    report = prune.run(corrected, prune.Config(sparsity=0.8, refit=False), S.context(g0, 400))
    shift_plain = output_mean_shift(plain, data, want)
    shift_fixed = output_mean_shift(corrected, data, want)
    assert shift_plain > 0.1
    assert shift_fixed < 1e-3  # the last layer's mean is restored exactly on the calib data
    assert all(report.per_tensor[n]["correction"] == "bias" for n in S.WEIGHTS)
    names = S.weights_of(corrected)
    assert "Conv_3_bias" in names and "MatMul_8_bias" in names  # created where missing
    # the weights themselves are identical with and without correction
    for n in S.WEIGHTS:
        np.testing.assert_array_equal(names[n], S.weights_of(plain)[n])
    S.export(corrected)


def test_refit_beats_bias_correction_and_keeps_the_mask() -> None:
    data = S.feeds(400)
    g0 = S.graph()
    want = C.run_graph(g0, data)
    bias_only, refit = S.graph(), S.graph()
    prune.run(bias_only, prune.Config(sparsity=0.8, refit=False), S.context(g0, 400))
    report = prune.run(refit, prune.Config(sparsity=0.8), S.context(g0, 400))
    plain = S.graph()
    prune.run(plain, prune.Config(sparsity=0.8, bias_correction=False), NO_DATA)
    for n in S.WEIGHTS:
        masked, fitted = S.weights_of(plain)[n], S.weights_of(refit)[n]
        np.testing.assert_array_equal(fitted == 0, masked == 0)  # same zeros, +0.0
        assert not np.signbit(fitted[fitted == 0]).any()
        assert report.per_tensor[n]["correction"] == "refit"
    assert report.per_tensor["conv1_w"]["sparsity"] == pytest.approx(0.8, abs=0.01)

    def err(g) -> float:
        return float(np.mean((C.run_graph(g, data) - want) ** 2))

    assert err(refit) < 0.8 * err(bias_only)
    assert output_mean_shift(refit, data, want.mean(0)) < 1e-3  # the fitted bias keeps the mean


def test_sensitivity_finds_the_redundant_fc_layer() -> None:
    g = S.graph(redundant_fc=True)
    ctx = S.context(g)
    report = prune.run(g, prune.Config(tolerance=1.0), ctx)
    assert report.notes[0] == "mode: sensitivity"
    got = sparsities(g)
    assert got["fc1_w"] >= 0.85  # 90% of its weights are ~0
    assert got["fc1_w"] > max(got["conv1_w"], got["conv2_w"])
    scan = report.per_tensor["fc1_w"]["scan"]
    assert next(iter(scan)) == "0.3" and all(isinstance(v, float) for v in scan.values())


def test_sensitivity_backs_off_to_meet_max_drop() -> None:
    g = S.graph()
    ctx = S.context(g)
    score = S.scorer(ctx, g)
    base = score(g)
    cfg = prune.Config(
        tolerance=100.0, max_drop=1.0, ladder=(0.05, 0.1, 0.2, 0.3, 0.5), holdout=False
    )
    report = prune.run(g, cfg, ctx)  # the scan allows every rung; only the back-off limits
    drop = base - score(g)
    assert drop <= 1.0 + 1e-9
    # every iteration re-masks the ORIGINAL weights, never the refit ones of the last try
    original = S.weights_of(S.graph())
    for name in S.WEIGHTS:
        zeros = S.weights_of(g)[name] == 0
        want = ~magnitude_mask(original[name], zeros.mean())
        np.testing.assert_array_equal(zeros, want)
    assert any("joint drop" in n for n in report.notes)
    assert 0.0 < np.mean(list(sparsities(g).values())) < 0.98  # backed off, but still pruned


def test_sensitivity_respects_pinned_layers() -> None:
    g = S.graph(redundant_fc=True)
    prune.run(g, prune.Config(per_layer={"Conv_0": 0.25}, ladder=(0.5, 0.9)), S.context(g))
    got = sparsities(g)
    assert got["conv1_w"] == pytest.approx(0.25, abs=0.02)


def test_capped_global_threshold() -> None:
    rng = np.random.default_rng(0)
    originals = {"a": rng.normal(0, 0.01, 10_000), "b": rng.normal(0, 1.0, 1_000)}
    masks = prune_search.capped_global_masks(originals, {"a": 0.5, "b": 0.9}, 0.5)
    pruned = {n: (~m).sum() for n, m in masks.items()}
    assert pruned["a"] == 5_000  # capped: plain global would prune ~all of the small layer
    assert pruned["a"] + pruned["b"] == pytest.approx(0.5 * 11_000, abs=2)
    t = np.abs(originals["b"][~masks["b"]]).max()  # b follows the one threshold
    assert (np.abs(originals["b"][masks["b"]]) > t).all()
    everything = prune_search.capped_global_masks(originals, {"a": 0.5, "b": 0.9}, 1.0)
    assert {n: (~m).sum() for n, m in everything.items()} == {"a": 5_000, "b": 900}


def test_global_mode_searches_the_ratio_for_max_drop() -> None:
    g = S.graph(redundant_fc=True)
    ctx = S.context(g)
    score = S.scorer(ctx, g)
    base = score(g)
    report = prune.run(g, prune.Config(mode="global", max_drop=1.0), ctx)
    assert base - score(g) <= 1.0 + 1e-9
    assert any(n.startswith("global: searched") for n in report.notes)
    assert sparsities(g)["fc1_w"] > 0.5
    with pytest.raises(BadInputError, match="needs 'sparsity'"):
        prune.run(S.graph(), prune.Config(mode="global"), NO_DATA)


def test_searches_score_held_out_samples_then_refit_on_all() -> None:
    g = S.graph(redundant_fc=True)
    data = S.feeds(400)
    want = C.run_graph(g, data).mean(0)
    report = prune.run(g, prune.Config(), S.context(g, 400))
    assert any("held-out" in n and "all 400" in n for n in report.notes)
    # the last layer was refit on all 400 samples: its output mean is theirs exactly
    assert output_mean_shift(g, data, want) < 1e-3
    small = S.graph()
    report = prune.run(small, prune.Config(), S.context(small, 120))
    assert any("too small to hold out" in n for n in report.notes)
