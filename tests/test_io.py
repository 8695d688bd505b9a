from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxcompress.data import input_specs
from onnxcompress.errors import BadInputError
from onnxcompress.io import load_model, save_model
from onnxcompress.normalize import normalize
from tests.conftest import tiny_cnn, tiny_data


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_normalize_folds_batchnorm_and_keeps_outputs():
    model = tiny_cnn()
    norm = normalize(model)
    ops = [n.op_type for n in norm.graph.node]
    assert "BatchNormalization" not in ops
    assert all(n.domain in ("", "ai.onnx") for n in norm.graph.node)
    x = tiny_data()["input"]
    np.testing.assert_allclose(_run(norm, x), _run(model, x), rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(norm, full_check=True)


def test_normalize_does_not_modify_input():
    model = tiny_cnn()
    before = model.SerializeToString()
    normalize(model)
    assert model.SerializeToString() == before


def test_gemm_batchnorm_is_folded():
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 5] input) => (float[N, 3] y) {
        h = Gemm <transB = 1> (input, w, b)
        y = BatchNormalization (h, s, bb, m, v)
    }""")
    vals = {"w": rng.normal(size=(3, 5)), "b": rng.normal(size=3), "s": rng.uniform(.5, 2, 3),
            "bb": rng.normal(size=3), "m": rng.normal(size=3), "v": rng.uniform(.5, 2, 3)}
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k)
                                   for k, v in vals.items())
    norm = normalize(model)
    assert [n.op_type for n in norm.graph.node] == ["Gemm"]
    x = rng.normal(size=(7, 5)).astype(np.float32)
    sess = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess(norm).run(None, {"input": x})[0],
                               sess(model).run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)


def test_legacy_initializer_inputs_and_constant_of_shape_weights():
    """Old exporters list weights as inputs; the onnx wheel's light models make them with
    ConstantOfShape. Both become plain initializers."""
    shape = numpy_helper.from_array(np.array([3, 4], np.int64), "wshape")
    value = helper.make_tensor("value", onnx.TensorProto.FLOAT, [1], [0.5])
    nodes = [helper.make_node("ConstantOfShape", ["wshape"], ["w"], value=value),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "legacy",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("wshape", onnx.TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    norm = normalize(model)
    assert [i.name for i in norm.graph.input] == ["x"]
    assert [n.op_type for n in norm.graph.node] == ["MatMul"]
    w = {t.name: numpy_helper.to_array(t) for t in norm.graph.initializer}[norm.graph.node[0].input[1]]
    np.testing.assert_array_equal(w, np.full((3, 4), 0.5, np.float32))
    assert norm.opset_import[0].version >= 13


def test_load_errors(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf at all \xff\xfe")
    with pytest.raises(BadInputError, match="not an ONNX model"):
        load_model(junk)
    full = tiny_cnn().SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(BadInputError):
        load_model(cut)


def test_save_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "m.onnx"
    save_model(tiny_cnn(), p)
    assert load_model(p).graph.node
    before = p.read_bytes()

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", broken)
    with pytest.raises(BadInputError, match="no space left"):
        save_model(tiny_cnn(seed=3), p)
    assert p.read_bytes() == before  # the old file is intact, no temporary file is left
    assert [f.name for f in tmp_path.iterdir()] == ["m.onnx"]


def test_external_data_round_trip(tmp_path):
    """Models whose tensors live in external data load, and are saved with data beside them."""
    src = tmp_path / "ext.onnx"
    onnx.save(tiny_cnn(), str(src), save_as_external_data=True, location="ext.bin",
              size_threshold=0)
    model = load_model(src)
    out = tmp_path / "out" / "copy.onnx"
    save_model(model, out, external=True)
    assert (out.parent / "copy.onnx.data").exists()
    again = onnx.load(str(out))
    x = tiny_data()["input"]
    np.testing.assert_array_equal(_run(again, x), _run(tiny_cnn(), x))


def test_input_specs_dynamic_batch():
    assert input_specs(tiny_cnn()) == [("input", [None, 1, 8, 8], np.dtype("float32"))]


def _gemm_bn_model(n: int = 64) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    model = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, {n}] input) => (float[N, {n}] y) {{
        h = Gemm <transB = 1> (input, w, b)
        y = BatchNormalization (h, s, bb, m, v)
    }}""")
    vals = {"w": rng.normal(size=(n, n)), "b": rng.normal(size=n), "s": rng.uniform(.5, 2, n),
            "bb": rng.normal(size=n), "m": rng.normal(size=n), "v": rng.uniform(.5, 2, n)}
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k)
                                   for k, v in vals.items())
    return model


def test_normalize_file_keeps_weights_out_of_the_proto(tmp_path):
    """Large initializers come back as arrays (one copy of the model in memory), the proto
    only names them; joined by to_graph they give the same model as normalize()."""
    from onnxcompress.container.protos import IN_MEMORY
    from onnxcompress.graph import to_graph, to_model
    from onnxcompress.normalize import normalize_file

    model = _gemm_bn_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    before = path.read_bytes()
    light, arrays = normalize_file(path)
    assert path.read_bytes() == before
    big = [t for t in light.graph.initializer if t.name in arrays]
    assert big and all(not t.raw_data and t.external_data[0].value == IN_MEMORY for t in big)
    assert light.ByteSize() < 4096 and sum(a.nbytes for a in arrays.values()) >= 64 * 64 * 4
    joined = to_model(to_graph(light, arrays), like=light)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in joined.graph.initializer)
    x = np.random.default_rng(2).normal(size=(5, 64)).astype(np.float32)
    sess = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess(joined).run(None, {"input": x})[0],
                               sess(model).run(None, {"input": x})[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(sess(joined).run(None, {"input": x})[0],
                                  sess(normalize(model)).run(None, {"input": x})[0])


def test_normalize_file_rejects_bad_files(tmp_path):
    from onnxcompress.normalize import normalize_file

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf at all \xff\xfe")
    with pytest.raises(BadInputError, match="not an ONNX model"):
        normalize_file(junk)
    with pytest.raises(BadInputError, match="no such file"):
        normalize_file(tmp_path / "missing.onnx")


def test_normalize_file_says_when_the_temporary_files_do_not_fit(tmp_path, monkeypatch):
    from onnxcompress.errors import OnnxCompressError
    from onnxcompress.normalize import normalize_file

    path = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), str(path))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "no-such-dir"))
    with pytest.raises(OnnxCompressError, match="point TMPDIR at a folder"):
        normalize_file(path)
