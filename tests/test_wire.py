"""wire.py: moving initializers to a data file by walking the protobuf wire format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxcompress.errors import BadInputError
from onnxcompress.normalize import normalize_file
from onnxcompress.wire import external_locations, split_weights
from tests.conftest import tiny_cnn


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_split_moves_large_raw_tensors_and_keeps_everything_else(tmp_path: Path):
    model = tiny_cnn()
    model.graph.initializer.append(numpy_helper.from_array(np.arange(6, dtype=np.int64), "small"))
    model.metadata_props.add(key="who", value="test")
    src = tmp_path / "in.onnx"
    onnx.save(model, str(src))
    moved, already = split_weights(src, tmp_path / "out.onnx", "out.data", min_bytes=1024)
    big = [t.name for t in model.graph.initializer if len(t.raw_data) >= 1024]
    assert (moved, already) == (len(big), 0) and big
    light = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    external = {t.name for t in light.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}
    assert external == set(big)
    back = onnx.load(str(tmp_path / "out.onnx"))  # reads out.data
    got, want = _arrays(back), _arrays(model)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    # everything but the initializers' data is unchanged, field for field
    for t in back.graph.initializer:
        del t.external_data[:]
        t.ClearField("data_location")
    assert back.SerializeToString() == model.SerializeToString()
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)
    assert external_locations(tmp_path / "out.onnx") == {"out.data"}
    assert external_locations(src) == set()


def test_split_counts_tensors_that_were_external_already(tmp_path: Path):
    src = tmp_path / "ext.onnx"
    onnx.save(tiny_cnn(), str(src), save_as_external_data=True, location="ext.bin",
              size_threshold=0)
    moved, already = split_weights(src, tmp_path / "out.onnx", "out.data")
    assert moved == 0 and already > 0
    light, arrays = normalize_file(src)  # then the original is used with its own data file
    assert arrays and all(not t.raw_data for t in light.graph.initializer if t.name in arrays)


@pytest.mark.parametrize("junk", [b"this is not a protobuf at all \xff\xfe", b"\x3a\xff\xff\xff\x0f"])
def test_split_refuses_what_is_not_protobuf(tmp_path: Path, junk: bytes):
    src = tmp_path / "junk.onnx"
    src.write_bytes(junk)
    with pytest.raises(BadInputError, match="not an ONNX model"):
        split_weights(src, tmp_path / "out.onnx", "out.data")
    with pytest.raises(BadInputError, match="not an ONNX model"):
        external_locations(src)


def test_truncated_model_is_refused(tmp_path: Path):
    full = tiny_cnn().SerializeToString()
    src = tmp_path / "cut.onnx"
    src.write_bytes(full[: len(full) - 7])
    with pytest.raises(BadInputError, match="not an ONNX model"):
        normalize_file(src)
