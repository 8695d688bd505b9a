from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.data import load_dataset
from onnxcompress.errors import BadInputError

SPECS = [("input", [None, 1, 8, 8], np.dtype("float32"))]


def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


def test_loads_inputs_and_labels(tmp_path):
    x = np.zeros((5, 1, 8, 8), np.float32)
    ds = load_dataset(_npz(tmp_path, input=x, labels=np.arange(5)), SPECS)
    assert len(ds) == 5 and ds.labels.tolist() == [0, 1, 2, 3, 4]


def test_npy_for_single_input(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.ones((2, 1, 8, 8), np.float32))
    assert load_dataset(p, SPECS).labels is None


@pytest.mark.parametrize("arrays, message", [
    ({"other": np.zeros((2, 1, 8, 8), np.float32)}, r"missing input\(s\) \['input'\]"),
    ({"input": np.zeros((2, 1, 8, 8), np.float64)}, "expected dtype float32, got float64"),
    ({"input": np.zeros((2, 1, 9, 8), np.float32)}, "axis 2 must be 8"),
    ({"input": np.zeros((2, 8, 8), np.float32)}, "expected 4 dimensions"),
    ({"input": np.zeros((2, 1, 8, 8), np.float32), "labels": np.zeros(3, np.int64)}, "labels"),
    ({"input": np.zeros((2, 1, 8, 8), np.float32), "extra": np.zeros(2)}, "unknown key"),
])
def test_bad_data_is_named(tmp_path, arrays, message):
    with pytest.raises(BadInputError, match=message):
        load_dataset(_npz(tmp_path, **arrays), SPECS, what="calibration")


def test_not_an_npz(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"garbage")
    with pytest.raises(BadInputError, match="neither an .npz archive nor a .npy array"):
        load_dataset(p, SPECS)


def test_dynamic_batch_any_count(tmp_path):
    for n in (1, 3, 17):
        assert len(load_dataset(_npz(tmp_path, input=np.zeros((n, 1, 8, 8), np.float32)),
                                SPECS)) == n
