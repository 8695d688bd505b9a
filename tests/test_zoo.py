"""The committed model zoo (models/): files load in ONNX Runtime with the documented interface,
their accuracy on models/data/eval.npz matches models/zoo.json, and the feeds have the documented
keys and shapes. No torch here: only onnx, onnxruntime and numpy."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `import models.…` from the repo root, however pytest was started
    sys.path.insert(0, str(ROOT))

from models import fashion_mnist, materialize

ZOO_DIR = ROOT / "models"
ZOO = ("lenet300", "lenet5", "vgg", "resnet", "squeezenet", "mobilenet", "vit")
BN_KEPT = ("vgg", "resnet", "mobilenet")
TOLERANCE = 1.5  # points of top-1


@pytest.fixture(scope="module")
def zoo_json() -> dict:
    return json.loads((ZOO_DIR / "zoo.json").read_text())


@pytest.fixture(scope="module")
def eval_feed() -> dict[str, np.ndarray]:
    with np.load(ZOO_DIR / "data" / "eval.npz") as data:
        return {k: data[k] for k in data.files}


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(ZOO_DIR / f"{name}.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("name", "count"), [("calib.npz", 1000), ("eval.npz", 2000)])
def test_feed_keys_and_shapes(name: str, count: int) -> None:
    with np.load(ZOO_DIR / "data" / name) as data:
        assert sorted(data.files) == ["input", "labels"]
        assert data["input"].shape == (count, 1, 28, 28) and data["input"].dtype == np.float32
        assert data["labels"].shape == (count,) and data["labels"].dtype == np.int64
        assert set(np.unique(data["labels"])) == set(range(10))


@pytest.mark.parametrize("name", ZOO)
def test_model_interface_has_dynamic_batch(name: str) -> None:
    sess = session(name)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert not isinstance(inp.shape[0], int) and inp.shape[1:] == [1, 28, 28]
    assert not isinstance(out.shape[0], int) and out.shape[1:] == [10]
    for batch in (1, 7):
        x = np.zeros((batch, 1, 28, 28), np.float32)
        assert sess.run(["logits"], {"input": x})[0].shape == (batch, 10)


@pytest.mark.parametrize("name", ZOO)
def test_weights_inline_and_bn_kept(name: str) -> None:
    model = onnx.load(str(ZOO_DIR / f"{name}.onnx"), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    bn = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert (bn > 0) == (name in BN_KEPT)


# The patterns each newer architecture must show in its graph (what the passes will meet).
SIGNATURE_OPS = {
    "mobilenet": {"Conv", "BatchNormalization", "Sigmoid", "Mul", "HardSwish", "Add",
                  "GlobalAveragePool", "Gemm"},  # SiLU = Sigmoid·Mul, SE gate = Sigmoid
    "vit": {"Conv", "MatMul", "Transpose", "LayerNormalization", "Softmax", "Erf", "Gemm"},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SIGNATURE_OPS))
def test_new_architectures_have_their_ops(name: str) -> None:
    model = onnx.load(str(ZOO_DIR / f"{name}.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert SIGNATURE_OPS[name] <= ops, SIGNATURE_OPS[name] - ops
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
        ("", 17)
    ]
    if name == "mobilenet":  # depthwise 3x3 convs: group == channels
        groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute
                  if a.name == "group"]  # fmt: skip
        assert max(groups) > 1


@pytest.mark.parametrize("name", ZOO)
def test_eval_accuracy_matches_zoo_json(name: str, zoo_json: dict, eval_feed: dict) -> None:
    logits = session(name).run(["logits"], {"input": eval_feed["input"]})[0]
    top1 = 100.0 * float((logits.argmax(1) == eval_feed["labels"]).mean())
    recorded = zoo_json[name]["onnxruntime"]
    assert {"top1_eval_npz", "top1_test"} <= recorded.keys()
    assert abs(top1 - recorded["top1_eval_npz"]) <= TOLERANCE, (name, top1, recorded)


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_loader_reads_idx_and_normalizes(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051, images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, np.array([7, 3]))
    x, y = fashion_mnist.load("test", data_dir=tmp_path)
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32
    assert y.tolist() == [7, 3] and y.dtype == np.int64
    want = (images / 255.0 - fashion_mnist.MEAN) / fashion_mnist.STD
    np.testing.assert_allclose(x[:, 0], want, rtol=1e-5, atol=1e-6)


def test_loader_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load("train", data_dir=tmp_path)


def test_materialize_squeezenet(tmp_path: Path) -> None:
    path = materialize.write_one("squeezenet", tmp_path, seed=0, check=True)
    model = onnx.load(str(path))
    assert not any(n.op_type == "ConstantOfShape" for n in model.graph.node)
    assert materialize.count_parameters(model) == 1_235_496  # SqueezeNet 1.1
    listed = {i.name for i in model.graph.input}
    assert all(t.name in listed for t in model.graph.initializer)  # legacy: inits are inputs
