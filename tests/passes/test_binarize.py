"""binarize pass: native XnorConv and portable forms agree on ONNX Runtime, layer selection and
its errors, trained-binary models lowered unchanged, BatchNorm folded, calibration refit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxcompress import ops
from onnxcompress.errors import BadInputError, RecipeError
from onnxcompress.graph import to_graph
from onnxcompress.passes import binarize as B
from onnxcompress.passes.base import Context
from onnxcompress.recipe import steps_from_dicts
from tests.helpers import calib_context

from .binary_nets import binarize, binary_net, float_net, images, pm_alpha, run_ort

GEOMETRIES = {
    "pad1": "pads = [1, 1, 1, 1]",
    "asym-stride2": "pads = [2, 0, 1, 3], strides = [2, 1]",
    "dilated": "pads = [2, 2, 2, 2], dilations = [2, 2]",
    "stride3-nopad": "strides = [3, 3]",
    "pad-exceeds-kernel": "pads = [3, 3, 3, 3], kernel_shape = [1, 1]",
}


def one_conv(c: int, m: int, kernel: tuple[int, int], attrs: str, seed: int = 0
             ) -> onnx.ModelProto:
    """x -> Conv(attrs) -> Conv 1x1: two layers so 'all' and names have something to pick."""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, {c}, 9, 11] x) => (float[N, 3, A, B] y) {{
        h = Conv <{attrs}> (x, w, b)
        y = Conv (h, w2)
    }}"""
    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([
        numpy_helper.from_array(rng.normal(size=(m, c, *kernel)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=m).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(3, m, 1, 1)).astype(np.float32), "w2")])
    return model


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("c,m", [(3, 5), (65, 7), (130, 2)])
def test_native_equals_portable_xnor(geometry: str, c: int, m: int):
    kernel = (1, 1) if "kernel_shape" in GEOMETRIES[geometry] else (3, 3)
    model = one_conv(c, m, kernel, GEOMETRIES[geometry])
    x = images((c, 9, 11), n=3)
    x[0, :, 2, 3] = 0.0  # sgn(0) = +1 in both forms
    native, rep = binarize(model, mode="xnor", target="native", layers="all")
    portable, _ = binarize(model, mode="xnor", target="portable", layers="all")
    assert [n.op_type for n in native.graph.node] == [ops.XNOR_CONV] * 2
    assert {n.op_type for n in portable.graph.node} == {"GreaterOrEqual", "Where", "Conv", "Mul",
                                                        "Add"}
    assert rep.per_tensor["Conv_0"]["op"] == ops.XNOR_CONV
    np.testing.assert_array_equal(run_ort(native, x), run_ort(portable, x))
    # with ORT's fusions the portable form differs only by float rounding
    np.testing.assert_allclose(run_ort(portable, x, optimize=True), run_ort(native, x),
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("geometry", ["pad1", "asym-stride2", "dilated"])
def test_input_scaling_k_native_equals_portable(geometry: str):
    model = one_conv(65, 7, (3, 3), GEOMETRIES[geometry])
    x = images((65, 9, 11), n=2)
    native, rep = binarize(model, target="native", layers="all", input_scaling=True)
    portable, _ = binarize(model, target="portable", layers="all", input_scaling=True)
    assert rep.per_tensor["Conv_0"]["input_scaling"]
    assert {"Abs", "Mul"} <= {n.op_type for n in native.graph.node}
    np.testing.assert_array_equal(run_ort(native, x), run_ort(portable, x))
    plain, _ = binarize(model, target="portable", layers="all")
    assert not np.allclose(run_ort(plain, x), run_ort(portable, x))


def test_input_scaling_k_matches_the_paper():
    """K[n, 0, p] = mean |x| over the channels and the window of output position p."""
    model = one_conv(4, 3, (3, 3), GEOMETRIES["pad1"])
    x = images((4, 9, 11), n=1)
    scaled, _ = binarize(model, target="portable", layers="Conv_0", input_scaling=True)
    kname = next(n.output[0] for n in scaled.graph.node if n.name == "Conv_0_K")
    del scaled.graph.output[:]
    scaled.graph.output.append(onnx.helper.make_tensor_value_info(kname, 1, None))
    k = run_ort(scaled, x)
    xp = np.pad(np.abs(x), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.array([[xp[0, :, i:i + 3, j:j + 3].mean() for j in range(11)] for i in range(9)])
    np.testing.assert_allclose(k[0, 0], want, rtol=1e-5)


@pytest.mark.parametrize("geometry", ["asym-stride2", "dilated"])
def test_native_agrees_with_portable_bwn(geometry: str):
    model = one_conv(65, 7, (3, 3), GEOMETRIES[geometry])
    x = images((65, 9, 11), n=2)
    native, _ = binarize(model, mode="bwn", target="native", layers="all")
    portable, _ = binarize(model, mode="bwn", target="portable", layers="all")
    a, b = run_ort(native, x), run_ort(portable, x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_float_net_whole_model_both_targets():
    model = float_net()
    x = images((3, 10, 10), n=4)
    for mode in ("xnor", "bwn"):
        nat, rep = binarize(model, mode=mode, target="native", layers="auto")
        por, _ = binarize(model, mode=mode, target="portable", layers="auto")
        np.testing.assert_allclose(run_ort(nat, x), run_ort(por, x), rtol=1e-5, atol=1e-5)
        assert sorted(rep.per_tensor) == ["Conv_2", "Conv_5"]


def test_auto_keeps_first_last_and_lists_skipped():
    _, rep = binarize(float_net(), layers="auto")
    notes = "\n".join(rep.notes)
    assert "kept in float: 'Conv_0' (first or last weight layer)" in notes
    assert "depthwise" in notes and "Conv_4" in notes
    assert set(rep.per_tensor) == {"Conv_2", "Conv_5"}
    assert "no calibration data" in notes


def test_all_takes_first_conv_but_skips_depthwise():
    _, rep = binarize(float_net(), layers="all")
    assert set(rep.per_tensor) == {"Conv_0", "Conv_2", "Conv_5"}


def test_explicit_names_and_patterns():
    model, rep = binarize(float_net(), layers="Conv_2,Conv_5", target="native")
    assert set(rep.per_tensor) == {"Conv_2", "Conv_5"}
    assert sum(n.op_type == ops.XNOR_CONV for n in model.graph.node) == 2
    _, rep = binarize(float_net(), layers=("Conv_[25]",))
    assert set(rep.per_tensor) == {"Conv_2", "Conv_5"}


@pytest.mark.parametrize("name,why", [
    ("Conv_4", "is a depthwise convolution; XnorConv supports group=1 only"),
    ("Gemm_9", "fully connected layers stay in float"),
    ("nope", "matches no layer; layers are: Conv_0"),
])
def test_explicit_unbinarizable_layers_say_why(name: str, why: str):
    with pytest.raises(BadInputError) as err:
        binarize(float_net(), layers=name)
    assert why in str(err.value) and name in str(err.value)


def test_non_constant_weight_says_why():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 2, 5, 5] x, float[3, 2, 3, 3] w) => (float[1, 3, 3, 3] y) {
        y = Conv (x, w)
    }"""
    graph = to_graph(onnx.parser.parse_model(text))
    with pytest.raises(BadInputError, match="expected a constant weight for Conv 'Conv_0', got "
                                            "the output of a graph input"):
        B.run(graph, B.Config(layers="Conv_0"), Context())


def test_config_checks_and_recipe():
    with pytest.raises(ValueError, match="input_scaling .* mode 'xnor' only"):
        B.Config(input_scaling=True, mode="bwn")
    with pytest.raises(ValueError):
        B.Config(mode="ternary")
    step = steps_from_dicts([{"pass": "binarize", "mode": "bwn", "target": "portable",
                              "layers": ["c1", "c2"]}], where="test")[0]
    assert step.config.layers == ("c1", "c2") and step.config.mode is B.Mode.BWN
    with pytest.raises(RecipeError, match="valid keys"):
        steps_from_dicts([{"pass": "binarize", "bits": 1}], where="test")


# ----------------------------------------------------------------------------- trained binary


@pytest.mark.parametrize("target", ["native", "portable"])
def test_trained_binary_lowered_unchanged_bn_folded(target: str):
    model = binary_net()
    x = images((2, 8, 8), n=6)
    before = run_ort(model, x, optimize=True)
    lowered, rep = binarize(model, mode="xnor", target=target, layers="auto")
    assert set(rep.per_tensor) == {"Conv_2", "Conv_4"}  # first conv and the Gemm stay float
    assert all(f["trained_binary"] for f in rep.per_tensor.values())
    assert "BatchNormalization" not in {n.op_type for n in lowered.graph.node}
    after = run_ort(lowered, x)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert (after.argmax(1) == before.argmax(1)).all()


def test_trained_binary_native_bit_identical_to_portable_with_exact_zeros():
    model = binary_net()
    x = images((2, 8, 8), n=4)
    nat, _ = binarize(model, target="native")
    por, _ = binarize(model, target="portable")
    assert "Sign" in {n.op_type for n in por.graph.node}  # Sign(0) = 0 kept
    np.testing.assert_array_equal(run_ort(nat, x), run_ort(por, x))


def _zero_sign_inputs_model() -> onnx.ModelProto:
    """Sign(x) -> conv(+-a): x itself has exact zeros, so Sign(0) = 0 matters."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 6, 6] x) => (float[N, 2] y) {
        c0 = Conv (x, w0)
        s = Sign (c0)
        c = Conv <pads = [1, 1, 1, 1]> (s, w)
        p = GlobalAveragePool (c)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, wf)
    }"""
    rng = np.random.default_rng(3)
    model = onnx.parser.parse_model(text)
    w0 = np.zeros((4, 4, 1, 1), np.float32)
    w0[:, :, 0, 0] = np.eye(4)  # c0 = x exactly
    model.graph.initializer.extend([
        numpy_helper.from_array(w0, "w0"),
        numpy_helper.from_array(pm_alpha(rng, (5, 4, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(2, 5)).astype(np.float32), "wf")])
    return model


def test_sign_of_zero_exact_vs_plus_one():
    model = _zero_sign_inputs_model()
    x = images((4, 6, 6), n=3)
    x[:, :, ::2, ::3] = 0.0  # many exact zeros reach Sign
    before = run_ort(model, x)
    exact, _ = binarize(model, target="native", layers="Conv_2")
    (node,) = [n for n in exact.graph.node if n.op_type == ops.XNOR_CONV]  # one call
    assert onnx.helper.get_node_attr_value(node, ops.ATTR_MODE) == ops.MODE_SIGN.encode()
    np.testing.assert_allclose(run_ort(exact, x), before, rtol=1e-5, atol=1e-6)
    plus, _ = binarize(model, target="native", layers="Conv_2", exact_zero=False)
    assert [n.op_type for n in plus.graph.node].count(ops.XNOR_CONV) == 1
    assert np.abs(run_ort(plus, x) - before).max() > 1e-3  # sgn(0) = +1 is a real change
    y = images((4, 6, 6), n=3, seed=9)  # no zeros: one XnorConv is exact too
    np.testing.assert_allclose(run_ort(plus, y), run_ort(model, y), rtol=1e-5, atol=1e-6)


def test_bwn_on_two_valued_weights_is_exact():
    model = binary_net()
    x = images((2, 8, 8), n=3)
    lowered, rep = binarize(model, mode="bwn", target="native", layers="auto")
    assert all(f["trained_binary"] for f in rep.per_tensor.values())
    np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- calibration


def _ctx(model: onnx.ModelProto, n: int = 64) -> Context:
    return calib_context({"input": images((3, 10, 10), n=n, seed=5)})


def test_refit_reduces_the_error_of_post_training_layers():
    model = float_net()
    x = images((3, 10, 10), n=32, seed=7)
    want = run_ort(model, x)
    plain, _ = binarize(model, mode="bwn", layers="Conv_2,Conv_5")
    fitted, rep = binarize(model, calib_context({"input": images((3, 10, 10), n=64, seed=5)}),
                           mode="bwn", layers="Conv_2,Conv_5")
    assert rep.per_tensor["Conv_2"]["output_transform"] == "least-squares alpha and bias"
    err = lambda m: np.abs(run_ort(m, x) - want).mean()
    assert err(fitted) < 0.5 * err(plain)


def test_auto_screens_layers_by_score():
    model = float_net()
    ctx = _ctx(model)
    costly = "Conv_5"

    def score(graph) -> float:  # binarizing Conv_5 costs 5 points, anything else nothing
        lowered = any(n.name == costly and n.op == "Conv" and n.inputs[1].name.endswith("_wpm1")
                      for n in graph.nodes)
        return 90.0 - 5.0 * lowered

    ctx.calibration.scorer = lambda reference, data=None: score
    _, rep = binarize(model, ctx, layers="auto", tolerance=1.0)
    assert set(rep.per_tensor) == {"Conv_2"}
    assert f"kept in float: '{costly}'" in "\n".join(rep.notes)


# ----------------------------------------------------------------------------- container


@pytest.mark.parametrize("target", ["native", "portable"])
def test_container_stores_one_bit_per_weight(tmp_path, target: str):
    from onnxcompress.container import write_container

    model = one_conv(128, 64, (3, 3), GEOMETRIES["pad1"])  # C = 128: no padding bits
    lowered, _ = binarize(model, mode="xnor", target=target, layers="Conv_0")
    creport = write_container(lowered, tmp_path / "m.onnxc")
    suffix = "_bits" if target == "native" else "_wpm1"
    row = next(t for t in creport.tensors if t.name.startswith("Conv_0") and t.name.endswith(suffix))
    ideal = 64 * 128 * 9 // 8  # M * K / 8
    assert row.stored_bytes <= ideal * 1.02 + 64
    assert 64 * 128 * 9 * 4 / row.stored_bytes >= 31


def test_container_drops_the_padding_bits_of_narrow_layers(tmp_path):
    """C = 32 fills half of each tap's 64-bit word: the bitgroups codec stores the live half."""
    from onnxcompress.container import write_container
    from onnxcompress.runtime import Session

    model = one_conv(32, 64, (3, 3), GEOMETRIES["pad1"])
    lowered, _ = binarize(model, mode="xnor", target="native", layers="Conv_0")
    creport = write_container(lowered, tmp_path / "m.onnxc")
    row = next(t for t in creport.tensors if t.name.endswith("_bits"))
    assert row.codec == "bitgroups"
    assert 64 * 32 * 9 * 4 / row.stored_bytes >= 31
    x = images((32, 9, 11), n=2)
    np.testing.assert_array_equal(Session(str(tmp_path / "m.onnxc")).run(None, {"x": x})[0],
                                  run_ort(lowered, x, optimize=True))


def test_refit_with_input_scaling():
    model = float_net()
    x = images((3, 10, 10), n=32, seed=7)
    want = run_ort(model, x)
    calib = calib_context({"input": images((3, 10, 10), n=64, seed=5)})
    err = lambda m: np.abs(run_ort(m, x) - want).mean()
    plain, _ = binarize(model, mode="xnor", layers="Conv_2,Conv_5", input_scaling=True)
    fitted, _ = binarize(model, calib, mode="xnor", layers="Conv_2,Conv_5", input_scaling=True)
    assert err(fitted) < 0.5 * err(plain)


def test_centered_inputs_native_equals_portable():
    model = float_net()
    x = images((3, 10, 10), n=4, seed=7)
    calib = {"input": images((3, 10, 10), n=64, seed=5) + 0.5}
    nat, rep = binarize(model, calib_context(calib), target="native", layers="Conv_2,Conv_5")
    por, _ = binarize(model, calib_context(calib), target="portable", layers="Conv_2,Conv_5")
    assert "centered" in rep.per_tensor["Conv_2"]["output_transform"]
    t = next(numpy_helper.to_array(i) for i in nat.graph.initializer
             if i.name == "Conv_2_threshold")
    assert t.shape == (1, 16, 1, 1) and np.all(t > 0)  # Conv_2 reads a ReLU: positive means
    np.testing.assert_array_equal(run_ort(nat, x), run_ort(por, x))
