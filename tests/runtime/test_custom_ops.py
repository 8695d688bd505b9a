"""XnorConv through onnxruntime-extensions: onnxcompress.runtime.Session, a plain
onnxruntime.InferenceSession with the documented one call, containers, and the fallback."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcompress.runtime
from onnxcompress import ops
from onnxcompress.container import write_container
from onnxcompress.kernels import xnor_native
from onnxcompress.kernels.xnor_ref import pack_weights, xnor_conv_ref
from onnxcompress.runtime import Session, custom_ops
from onnxcompress.runtime.run_context import OpState, run_scope

from ..passes.binary_nets import binarize, binary_net, float_net, images, run_ort


def test_conv_attrs_round_trip_and_errors():
    text = ops.encode_conv_attrs((3, 1), (2, 1), (1, 0, 2, 0), (1, 2))
    assert text == "kernel_shape=3,1;strides=2,1;pads=1,0,2,0;dilations=1,2;group=1"
    assert ops.decode_conv_attrs(text)[ops.ATTR_PADS] == (1, 0, 2, 0)
    assert ops.decode_conv_attrs("kernel_shape=1,1")[ops.ATTR_STRIDES] == (1, 1)
    with pytest.raises(ValueError, match="pads needs 4 values"):
        ops.decode_conv_attrs("kernel_shape=1,1;pads=1,1")
    with pytest.raises(ValueError, match="bad conv_attrs entry"):
        ops.decode_conv_attrs("kernel_shape=1,1;stride=2,2")


@pytest.fixture(scope="module")
def native_model(tmp_path_factory) -> tuple[Path, onnx.ModelProto]:
    model, _ = binarize(float_net(), mode="xnor", target="native", layers="all")
    path = tmp_path_factory.mktemp("bin") / "bin.onnx"
    onnx.save(model, str(path))
    return path, model


def test_session_and_plain_onnxruntime_run_xnorconv(native_model):
    path, model = native_model
    assert custom_ops.uses_custom_domain(path)
    x = images((3, 10, 10), n=3)
    want = run_ort(model, x, optimize=True)
    np.testing.assert_array_equal(Session(str(path)).run(None, {"input": x})[0], want)
    np.testing.assert_array_equal(Session(path.read_bytes()).run(None, {"input": x})[0], want)
    # the documented one call for a plain ONNX Runtime session:
    sess = ort.InferenceSession(str(path), onnxcompress.runtime.session_options())
    np.testing.assert_array_equal(sess.run(None, {"input": x})[0], want)


def test_container_of_a_native_model_runs_and_stores_one_bit_per_weight(native_model, tmp_path):
    _, model = native_model
    out = tmp_path / "bin.onnxc"
    creport = write_container(model, out)
    x = images((3, 10, 10), n=2)
    np.testing.assert_array_equal(Session(str(out)).run(None, {"input": x})[0],
                                  run_ort(model, x, optimize=True))
    bits = {t.name: t for t in creport.tensors if t.name.endswith("_bits")}
    assert bits, [t.name for t in creport.tensors]
    for t in bits.values():
        arr = next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer
                   if i.name == t.name)
        assert t.stored_bytes <= arr.nbytes + 16  # never inflated beyond the packed bits


def test_plain_models_do_not_need_the_extensions(tmp_path):
    p = tmp_path / "f.onnx"
    onnx.save(float_net(), str(p))
    assert not custom_ops.uses_custom_domain(p)
    assert Session(str(p)).run(None, {"input": images((3, 10, 10), n=1)})[0].shape == (1, 4)


def test_trained_binary_through_session_unchanged(tmp_path):
    model = binary_net()
    lowered, _ = binarize(model, target="native")
    p = tmp_path / "b.onnx"
    onnx.save(lowered, str(p))
    x = images((2, 8, 8), n=4)
    np.testing.assert_allclose(Session(str(p)).run(None, {"input": x})[0],
                               run_ort(model, x, optimize=True), rtol=1e-5, atol=1e-5)


def test_missing_native_library_falls_back_with_a_warning(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 6, 6)).astype(np.float32)
    bits, alpha = pack_weights(rng.normal(size=(4, 5, 3, 3)))
    bias = np.zeros(4, np.float32)
    xnor_native.library.cache_clear()
    monkeypatch.setattr(xnor_native, "_find_library", lambda: None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = custom_ops._xnor_conv_op(
                x, bits, alpha, bias, mode="xnor",
                conv_attrs=ops.encode_conv_attrs((3, 3), pads=(1, 1, 1, 1)))
        assert any("native library" in str(w.message) for w in caught)
        want = xnor_conv_ref(x, bits, alpha, bias, kernel_shape=(3, 3), pads=(1, 1, 1, 1))
        np.testing.assert_array_equal(got, want)
    finally:
        xnor_native.library.cache_clear()


def test_other_python_ops_keep_the_stock_result_path():
    """XnorConv's results go back as arrays; another Python op still works as before."""
    import onnxruntime_extensions as ox
    from onnx import TensorProto, helper

    onnxcompress.runtime.session_options()  # XnorConv registered, its result handler installed

    @ox.onnx_op(op_type="OnnxcompressTestTwice", inputs=[ox.PyCustomOpDef.dt_float],
                outputs=[ox.PyCustomOpDef.dt_float])
    def _twice(x):
        return x * 2

    node = helper.make_node("OnnxcompressTestTwice", ["x"], ["y"], domain=ops.DOMAIN)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, 1)])
    sess = ort.InferenceSession(model.SerializeToString(), onnxcompress.runtime.session_options())
    np.testing.assert_array_equal(sess.run(None, {"x": np.arange(3, dtype=np.float32)})[0],
                                  [0, 2, 4])


@pytest.mark.parametrize("m", [8, 512])  # 2.3 KB of bits: bytes comparison; 74 KB: numpy's
def test_op_prepares_each_layer_once_and_tells_same_shaped_layers_apart(monkeypatch, m: int):
    """Layers are cached by their bits, not by the (fresh every call) array address."""
    state = OpState(threads=1)
    rng = np.random.default_rng(5)
    attrs = {ops.ATTR_MODE: "xnor",
             ops.CONV_ATTRS: ops.encode_conv_attrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))}
    x = rng.standard_normal((1, 70, 9, 9)).astype(np.float32)
    layers = [pack_weights(rng.standard_normal((m, 70, 3, 3))) for _ in range(2)]
    layers[1][0][:, :64] = layers[0][0][:, :64]  # same first bytes: the full comparison decides
    bias = np.zeros(m, np.float32)
    with run_scope(state, ort.RunOptions()) as scope:
        for _ in range(3):
            for bits, alpha in layers:
                got = custom_ops._xnor_conv_op(x, bits.copy(), alpha, bias, **attrs)
                want = xnor_conv_ref(x, bits, alpha, bias, kernel_shape=(3, 3), pads=(1, 1, 1, 1))
                np.testing.assert_array_equal(got, want)
    assert scope.error is None
    (bucket,) = state.prepared.values()
    assert len(bucket) == 2
