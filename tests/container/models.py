"""Seeded test models for the container tests: every kind of initializer the codecs meet."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

NET = """
<ir_version: 8, opset_import: ["" : 17]>
packed (float[1, 8, 8, 8] x) => (float[1, 4] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, conv_w, conv_b)
    r = Relu (c)
    f = Reshape (r, shape)
    h = Gemm <transB = 1> (f, fc_w, fc_b)
    i32 = Cast <to = 6> (fc2_idx)
    w3 = Gather <axis = 0> (fc2_book, i32)
    y = MatMul (h, w3)
}
"""

KINDS = {"conv_w": "conv", "fc_w": "fc"}


def pruned_clustered(
    rng: np.random.Generator, shape: tuple[int, ...], levels: int = 32, density: float = 0.1
) -> np.ndarray:
    """float32 weights on `levels` shared values, (1 - density) of them exactly +0.0."""
    centers = np.linspace(-0.5, 0.5, levels).astype(np.float32)
    w = centers[rng.integers(0, levels, size=shape)]
    w[rng.random(shape) >= density] = 0.0
    return w


def special_floats() -> np.ndarray:
    """A codebook-sized tensor whose values only bit patterns tell apart: +-0, NaNs, inf."""
    pats = np.array(
        [0x00000000, 0x80000000, 0x7FC00000, 0x7FC00001, 0xFFC00000, 0x7F800000, 0x3F800000],
        dtype=np.uint32,
    )
    rng = np.random.default_rng(42)
    return pats[rng.integers(0, pats.size, size=700)].view(np.float32).reshape(70, 10)


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    conv = pruned_clustered(rng, (32, 8, 3, 3))
    conv.reshape(-1)[100:700] = 0.0  # a run longer than 2^8 - 1: filler entries
    fc = pruned_clustered(rng, (64, 2048), density=0.2)
    fc.reshape(-1)[5000:5400] = 0.0  # far longer than 2^5 - 1
    idx = rng.integers(0, 16, size=(100, 50)).astype(np.uint8)
    idx[rng.random(idx.shape) < 0.85] = 7  # one dominant index: sparse variant
    return {
        "conv_w": conv,
        "conv_b": rng.normal(0, 0.1, 32).astype(np.float32),
        "shape": np.array([1, -1], dtype=np.int64),
        "fc_w": fc,
        "fc_b": rng.normal(0, 0.1, 64).astype(np.float32),
        "fc2_book": np.linspace(-1, 1, 16).astype(np.float32),
        "fc2_idx": rng.integers(0, 16, size=(64, 4)).astype(np.uint8),
        "emb_idx": idx,
        "dense": rng.normal(0, 1, (40, 30)).astype(np.float32),
        "half": rng.normal(0, 1, (17, 3)).astype(np.float16),
        "int8": rng.integers(-128, 128, size=(33, 7)).astype(np.int8),
        "bits": special_floats(),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(3.25, dtype=np.float32),
        "flag": np.array([True, False, True]),
    }


def net(seed: int = 0) -> onnx.ModelProto:
    """The runnable NET with its weights plus unused initializers of other dtypes and shapes."""
    model = onnx.parser.parse_model(NET)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights(seed).items())
    return model


def initializer_bits(model: onnx.ModelProto) -> dict[str, tuple[str, tuple, bytes]]:
    """name -> (dtype, shape, bytes) of every initializer, for bit-exact comparison."""
    out = {}
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        out[t.name] = (str(a.dtype), a.shape, a.tobytes())
    return out


def channel_pruned(rng: np.random.Generator, shape: tuple[int, ...], keep: float,
                   levels: int = 8) -> np.ndarray:
    """float32 weights pruned a kernel (the last two dims of a conv weight) or a run of 64 (an fc
    row) at a time, the kept ones on `levels` shared values with the middle one most common: long
    zero runs, where the sparse forms beat the dense codebook ones."""
    run = shape[-1] * shape[-2] if len(shape) == 4 else 64
    centers = np.linspace(-0.5, 0.5, levels).astype(np.float32)
    w = centers[np.clip(np.round(rng.normal(levels / 2, 1.2, size=shape)), 0, levels - 1)
                .astype(int)]
    kept = np.repeat(rng.random(w.size // run) < keep, run).reshape(shape)
    return np.where(kept, w, np.float32(0.0)).astype(np.float32)


def structured_net(seed: int = 0) -> onnx.ModelProto:
    """NET whose conv and fc weights were pruned a channel at a time (channel_pruned)."""
    model = net(seed)
    rng = np.random.default_rng(seed + 1)
    for t in model.graph.initializer:
        if t.name in KINDS:
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(channel_pruned(rng, w.shape, 0.3), t.name))
    return model
