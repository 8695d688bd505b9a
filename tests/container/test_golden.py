"""A committed tiny container: its bytes must not drift, and it must keep reading back.

If the format changes on purpose, bump format.VERSION, document it in docs/FORMAT.md and
regenerate with `python -m tests.container.test_golden`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcompress.container import container_bytes, read_container

GOLDEN = Path(__file__).parent / "golden" / "tiny_v1.onnxc"

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


def test_bytes_match_the_golden_file() -> None:
    assert container_bytes(tiny_model(), tensor_kinds=KINDS) == GOLDEN.read_bytes()


def test_golden_file_uses_every_codec_family() -> None:
    import tempfile

    from onnxcompress.container import write_container

    with tempfile.TemporaryDirectory() as tmp:
        rows = write_container(tiny_model(), Path(tmp) / "t.onnxc", tensor_kinds=KINDS).tensors
    assert [r.codec for r in rows] == ["sparse", "zlib", "sparse", "zlib", "codebook"]


def test_golden_file_reads_back() -> None:
    back = read_container(GOLDEN)
    want = tiny_model()
    for a, b in zip(want.graph.initializer, back.graph.initializer):
        assert a.name == b.name
        assert numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes()


if __name__ == "__main__":
    GOLDEN.write_bytes(container_bytes(tiny_model(), tensor_kinds=KINDS))
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
