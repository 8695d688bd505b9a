"""Committed tiny containers: the writer's bytes must not drift, and they must keep reading back.

tiny_v1.onnxc was written before the rANS codecs (6, 7) existed: it is never regenerated and shows
that older files still read. tiny_v1_rans.onnxc is what the writer writes now, with every
codebook and sparse codec. If the format changes on purpose, bump format.VERSION, document it in
docs/FORMAT.md and regenerate with `python -m tests.container.test_golden`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxcompress.container import container_bytes, read_container
from onnxcompress.container.reader import _parse

BEFORE_RANS = Path(__file__).parent / "golden" / "tiny_v1.onnxc"
GOLDEN = Path(__file__).parent / "golden" / "tiny_v1_rans.onnxc"

TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[1, 8, 6, 6] x) => (float[1, 64] y) {
    c = Conv (x, conv_w)
    f = Reshape (c, shape)
    h = Gemm <transB = 1> (f, fc_w, fc_b)
    y = MatMul (h, out_w)
}
"""
KINDS = {"conv_w": "conv", "fc_w": "fc"}


def lcg(n: int, seed: int) -> np.ndarray:
    """n pseudo-random uint32 from a fixed linear congruential generator (never changes)."""
    out = np.empty(n, dtype=np.uint64)
    x = seed
    for i in range(n):
        x = (x * 1664525 + 1013904223) % 2**32
        out[i] = x
    return out >> np.uint64(8)


def clustered(n: int, seed: int, keep_per_16: int) -> np.ndarray:
    """Values on 8 levels; keep_per_16 / 16 of them nonzero."""
    r = lcg(n, seed)
    levels = ((r % 8).astype(np.float32) - 3.5) * 0.25
    return np.where((r >> np.uint64(4)) % 16 < keep_per_16, levels, 0.0).astype(np.float32)


def tiny_model() -> onnx.ModelProto:
    """Weights from integer arithmetic only (no numpy RNG), so they never change."""
    conv = clustered(16 * 8 * 3 * 3, 1, 3)
    conv[100:400] = 0.0  # longer than 2^8 - 1: fillers at gap_bits 8
    fc = clustered(8 * 256, 2, 3)
    fc[70:140] = 0.0  # longer than 2^5 - 1: fillers at gap_bits 5
    inits = {
        "conv_w": conv.reshape(16, 8, 3, 3),
        "shape": np.array([1, -1], dtype=np.int64),
        "fc_w": fc.reshape(8, 256),
        "fc_b": np.array([0.5, -0.0, 1.5, np.nan, 0, 0, 0, 1], dtype=np.float32),
        "out_w": clustered(8 * 64, 3, 16).reshape(8, 64),  # dense: codebook
    }
    model = onnx.parser.parse_model(TINY)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items())
    return model


def runs(n_rows: int, row: int, keep_per_16: int, seed: int, rare_per_64: int) -> np.ndarray:
    """Rows of `row` values that are all +0.0 or all kept (keep_per_16 / 16 of the rows, as a
    pruned channel would be); kept values are 0.5 but for rare_per_64 / 64 of them on 4 other
    levels: long zero runs favour the sparse forms, the skewed values rANS."""
    r = lcg(n_rows * row, seed)
    rare = ((r >> np.uint64(6)) % 4).astype(np.float32) + 1
    values = np.where(r % 64 < rare_per_64, rare, np.float32(0.5))
    kept = np.repeat(lcg(n_rows, seed + 100) % 16 < keep_per_16, row)
    return np.where(kept, values, 0.0).astype(np.float32).reshape(n_rows, row)


def tiny_rans_model() -> onnx.ModelProto:
    """tiny_model with two tensors in the sparse forms: rANS wins one, Huffman the other."""
    model = tiny_model()
    model.graph.initializer.extend([
        numpy_helper.from_array(runs(64, 32, 6, 4, 4), "runs_w"),  # sparse-rans
        numpy_helper.from_array(runs(128, 16, 2, 5, 8), "rows_w"),  # sparse (Huffman)
    ])
    return model


def test_bytes_match_the_golden_file() -> None:
    assert container_bytes(tiny_rans_model(), tensor_kinds=KINDS) == GOLDEN.read_bytes()


def test_golden_file_uses_every_codec_family() -> None:
    import tempfile

    from onnxcompress.container import write_container

    with tempfile.TemporaryDirectory() as tmp:
        rows = write_container(tiny_rans_model(), Path(tmp) / "t.onnxc",
                               tensor_kinds=KINDS).tensors
    assert [r.codec for r in rows] == ["codebook_rans", "zlib", "codebook_rans", "zlib",
                                       "codebook", "sparse_rans", "sparse"]


@pytest.mark.parametrize(("path", "model", "codecs"), [
    (BEFORE_RANS, tiny_model, [4, 1, 4, 1, 3]),
    (GOLDEN, tiny_rans_model, [6, 1, 6, 1, 3, 7, 4]),
])
def test_golden_files_read_back(path: Path, model, codecs: list[int]) -> None:
    data = path.read_bytes()
    assert [e.codec for e in _parse(memoryview(data), str(path)).tensors] == codecs
    back = read_container(path)
    want = model()
    assert len(want.graph.initializer) == len(back.graph.initializer)
    for a, b in zip(want.graph.initializer, back.graph.initializer):
        assert a.name == b.name
        assert numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes()


if __name__ == "__main__":
    GOLDEN.write_bytes(container_bytes(tiny_rans_model(), tensor_kinds=KINDS))
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
