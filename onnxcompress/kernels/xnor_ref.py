"""Pure-numpy reference of XnorConv: weight bit-packing and the exact math of ``ops.py``.

This is the specification the native kernels (csrc/xnor) are tested against, and the fallback
when the compiled library is missing.  It is written for clarity, not speed: the dot products
are plain tensordots over the taps, exact in float64 for the +-1 sums of mode "xnor".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ops import (
    MODE_SIGN,
    check_conv_attrs,
    check_op_mode,
    conv_output_hw,
    packed_row_bytes,
    words_per_tap,
)


def sign_pm1(x: np.ndarray) -> np.ndarray:
    """+1 where x >= 0 (zeros included), -1 elsewhere (NaN included), as float32."""
    return np.where(x >= 0, np.float32(1), np.float32(-1))


def sign_or_zero(x: np.ndarray) -> np.ndarray:
    """ONNX Sign (+1, 0, -1) with NaN counted as 0, as float32 (the op's mode "sign")."""
    return (np.greater(x, 0).astype(np.float32) - np.less(x, 0)).astype(np.float32)


def pack_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float weights [M, C, KH, KW] -> (bits uint8 [M, KH*KW*CW*8], alpha float32 [M]).

    Bit layout as in ``ops.py``; alpha[m] = mean |w[m]| (XNOR-Net's optimal scale).
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 4:
        raise ValueError(f"expected Conv weights of shape [M, C, KH, KW], got shape {w.shape}")
    m, c, kh, kw = w.shape
    bits = np.zeros((m, kh, kw, words_per_tap(c) * 64), dtype=np.uint8)
    bits[..., :c] = w.transpose(0, 2, 3, 1) >= 0
    packed = np.packbits(bits, axis=-1, bitorder="little").reshape(m, -1)
    alpha = np.abs(w).reshape(m, -1).mean(axis=1, dtype=np.float64).astype(np.float32)
    return packed, alpha


def as_bytes(packed: np.ndarray) -> np.ndarray:
    """The packed weights as a C-contiguous uint8 [M, bytes] array (accepts uint64 [M, words])."""
    packed = np.ascontiguousarray(packed)
    if packed.dtype == np.uint64:
        return packed.view(np.uint8).reshape(packed.shape[0], -1) if packed.ndim == 2 else packed
    if packed.dtype != np.uint8:
        raise ValueError(f"expected packed weights of dtype uint8 or uint64, got {packed.dtype}")
    return packed


def check_packed(packed: np.ndarray, channels: int, kernel_shape: tuple[int, int]) -> np.ndarray:
    """Validate the packed weights against C and kernel_shape; return them as uint8 bytes."""
    packed = as_bytes(packed)
    want = packed_row_bytes(channels, kernel_shape)
    if packed.ndim != 2 or packed.shape[1] != want:
        raise ValueError(
            f"XnorConv: packed weights of shape {packed.shape} do not fit C={channels}, "
            f"kernel_shape={list(kernel_shape)}: expected [M, {want}] "
            f"(KH*KW*ceil(C/64)*8 bytes per output channel)"
        )
    return packed


def unpack_weights(packed: np.ndarray, channels: int, kernel_shape: Sequence[int]) -> np.ndarray:
    """Packed bits -> float32 +-1 weights [M, C, KH, KW] (the portable form's Conv weights)."""
    kh, kw = kernel_shape
    packed = check_packed(packed, channels, (kh, kw))
    m = packed.shape[0]
    bits = np.unpackbits(packed.reshape(m, kh, kw, -1), axis=-1, bitorder="little")
    pm1 = np.where(bits[..., :channels] == 1, np.float32(1), np.float32(-1))
    return np.ascontiguousarray(pm1.transpose(0, 3, 1, 2))


def xnor_conv_ref(
    x: np.ndarray,
    packed_w: np.ndarray,
    alpha: np.ndarray,
    bias: np.ndarray | None,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    mode: str = "xnor",
    group: int = 1,
) -> np.ndarray:
    """XnorConv exactly as specified in ``ops.py`` (float32 NCHW in and out)."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = check_conv_attrs(
        kernel_shape, strides, pads, dilations, group
    )
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"XnorConv expects a 4-D NCHW input, got shape {x.shape}")
    n, c, h, w = x.shape
    wpm1 = unpack_weights(packed_w, c, (kh, kw)).astype(np.float64)
    oh, ow = conv_output_hw((h, w), (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw))
    mode = check_op_mode(mode)
    xs = {"xnor": sign_pm1, "bwn": lambda v: v, MODE_SIGN: sign_or_zero}[mode](x)
    xp = np.pad(xs.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    acc = np.zeros((n, wpm1.shape[0], oh, ow), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            win = xp[
                :,
                :,
                i * dh : i * dh + (oh - 1) * sh + 1 : sh,
                j * dw : j * dw + (ow - 1) * sw + 1 : sw,
            ]
            acc += np.einsum("nchw,mc->nmhw", win, wpm1[:, :, i, j])
    alpha = np.asarray(alpha, dtype=np.float32).reshape(1, -1, 1, 1)
    y = acc.astype(np.float32) * alpha
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float32).reshape(1, -1, 1, 1)
    return y
