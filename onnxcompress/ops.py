"""The custom-op contract between the converter (binarize pass) and the runtime.

Both sides import the names below; nothing here imports onnx or onnxruntime.

XnorConv (domain ``ai.onnx.contrib``) — a 2-D Conv with binary weights (XNOR-Net, Rastegari et
al. 2016, "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks").

Inputs, in this order:
  0. ``X``      float32 [N, C, H, W].
  1. ``W_bits`` uint8 [M, KH * KW * CW * 8] (or the same bytes viewed as uint64 [M, KH * KW * CW]),
     with CW = ceil(C / 64).  For output channel m the row holds KH*KW taps in row-major order
     (t = kh * KW + kw); each tap holds CW little-endian 64-bit words; bit b of word j is 1 when
     W[m, 64 j + b, kh, kw] >= 0 (weight +1) and 0 when it is < 0 (weight -1).  Bits for channels
     >= C are padding: written 0, ignored on read.  ``onnxcompress.kernels.xnor_ref.pack_weights``
     is the reference packer (numpy ``packbits(..., bitorder="little")`` over that order).
  2. ``alpha``  float32 [M], per-output-channel scale (XNOR-Net: mean |W[m]|).
  3. ``B``      optional float32 [M] bias.

Attributes (as for ONNX Conv): ``kernel_shape`` [KH, KW] (required: C is not recoverable from the
padded bits alone, KH and KW are), ``strides`` (default [1, 1]), ``pads`` [top, left, bottom,
right] (default zeros; ``auto_pad`` is not supported, the converter writes explicit pads),
``dilations`` (default [1, 1]), ``group`` (only 1 is supported; anything else is an error), and
``mode``: ``"xnor"``, ``"bwn"`` or ``"sign"`` (``OP_MODES``).  Ranges (``check_conv_attrs``):
kernel sizes, strides and dilations 1..ATTR_MAX, pads 0..ATTR_MAX, where ATTR_MAX = 2**31 - 1 is
what the C kernels carry (int32); a value outside is an error, never truncated.

Output float32 [N, M, OH, OW], OH = floor((H + top + bottom - (dilation_h * (KH - 1) + 1)) /
stride_h) + 1 (and likewise OW):

    sgn(v)   = +1 if v >= 0 else -1             (so sgn(0) = +1 and sgn(NaN) = -1)
    Xb       = sgn(X) in mode "xnor", X in mode "bwn", Sign(X) in mode "sign"
               (ONNX Sign: -1, 0 or +1, so an input of exactly 0 contributes 0; NaN also 0)
    D[n,m,p] = sum over taps t inside the image and c < C of Xb[n,c,tap(p,t)] * sgn(W[m,c,t])
    Y[n,m,p] = float32(D[n,m,p]) * alpha[m]  (+ B[m])

Taps that fall into the zero padding contribute exactly 0 (Conv zero padding), even though a
padded 0 is neither +1 nor -1.  In mode "xnor" D is an exact integer, so Y is fixed to the bit:
one float32 multiply, then one float32 add (never fused); likewise in mode "sign", which the
converter uses for layers trained with ONNX ``Sign`` in front of their Conv.  In mode "bwn" D is a float32 sum whose
rounding depends on summation order.

Portable standard-ONNX form (what the binarize pass emits beside the custom op; tests check that
ONNX Runtime gives bit-identical results in mode "xnor"):

    Xs = Where(GreaterOrEqual(X, 0), 1.0, -1.0)     # mode "xnor" only; NOT Sign (Sign(0) = 0)
    Y  = Add(Mul(Conv(Xs, Wpm1, pads, strides, dilations), alpha[1, M, 1, 1]), B[1, M, 1, 1])

with Wpm1 = float32 +-1 weights (``unpack_weights``) and no Conv bias.  A float Conv over +-1
values sums integers, which float32 holds exactly below 2**24 taps.  Bit-identity needs ONNX
Runtime's graph optimizations off (ORT_DISABLE_ALL): from ORT_ENABLE_BASIC on, ConvMulFusion and
ConvAddFusion fold alpha and B into the Conv weights, and the outputs then differ by float
rounding (about 1e-7 relative to alpha * C * KH * KW).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from enum import Enum

DOMAIN = "ai.onnx.contrib"
XNOR_CONV = "XnorConv"

# Input order.
IN_X, IN_WEIGHT_BITS, IN_ALPHA, IN_BIAS = 0, 1, 2, 3

# Attribute names (ONNX Conv spelling) and defaults.
ATTR_KERNEL_SHAPE = "kernel_shape"
ATTR_STRIDES = "strides"
ATTR_PADS = "pads"
ATTR_DILATIONS = "dilations"
ATTR_GROUP = "group"
ATTR_MODE = "mode"
DEFAULTS: dict[str, object] = {
    ATTR_STRIDES: (1, 1),
    ATTR_PADS: (0, 0, 0, 0),
    ATTR_DILATIONS: (1, 1),
    ATTR_GROUP: 1,
}

WORD_BITS = 64


class Mode(str, Enum):
    """What the activations are: binarized by sign (``xnor``) or used as floats (``bwn``)."""

    XNOR = "xnor"
    BWN = "bwn"


# The op's ``mode`` values: a user picks a Mode; "sign" is the op's exact form of a layer whose
# input comes from ONNX Sign (Sign(0) = 0), chosen by the converter.  Index = the C enum.
MODE_SIGN = "sign"
OP_MODES = (Mode.XNOR.value, Mode.BWN.value, MODE_SIGN)


def check_op_mode(mode: str) -> str:
    """`mode` if XnorConv knows it, else a ValueError that lists the modes."""
    mode = getattr(mode, "value", mode)
    if not isinstance(mode, str) or mode not in OP_MODES:
        raise ValueError(f"XnorConv: unknown mode {mode!r}; expected one of {list(OP_MODES)}")
    return mode


# The C kernels take every geometry value as int32 (csrc/xnor/xnor.h): a larger one would be
# truncated there while Python sizes the buffers from the full value, so it is refused here.
ATTR_MAX = 2**31 - 1
_LOWEST = {ATTR_KERNEL_SHAPE: 1, ATTR_STRIDES: 1, ATTR_PADS: 0, ATTR_DILATIONS: 1}


def _int_list(values: Sequence[int], name: str, count: int) -> tuple[int, ...]:
    """`values` as `count` ints within _LOWEST[name]..ATTR_MAX, else a ValueError saying which."""
    try:
        out = tuple(operator.index(v) for v in values)
    except TypeError:
        raise ValueError(f"XnorConv: {name} must be integers, got {list(values)!r}") from None
    if len(out) != count:
        raise ValueError(f"XnorConv: {name} needs {count} values, got {list(out)}")
    low = _LOWEST[name]
    bad = [v for v in out if not low <= v <= ATTR_MAX]
    if bad:
        raise ValueError(
            f"XnorConv: {name} {list(out)} holds {bad[0]}, outside {low}..{ATTR_MAX}"
        )
    return out


def check_conv_attrs(
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
    """(kernel_shape, strides, pads, dilations) as int tuples after checking count, type and
    range of each and group == 1; a ValueError names the attribute and the allowed values."""
    if group != 1:
        raise ValueError(
            f"XnorConv supports group=1 only, got group={group}; grouped and "
            "depthwise convolutions are left in float"
        )
    return (
        _int_list(kernel_shape, ATTR_KERNEL_SHAPE, 2),
        _int_list(strides, ATTR_STRIDES, 2),
        _int_list(pads, ATTR_PADS, 4),
        _int_list(dilations, ATTR_DILATIONS, 2),
    )


def words_per_tap(channels: int) -> int:
    """CW: 64-bit words holding one tap's channel bits."""
    return (channels + WORD_BITS - 1) // WORD_BITS


def packed_row_bytes(channels: int, kernel_shape: tuple[int, int]) -> int:
    """Bytes per output channel in ``W_bits``: KH * KW * CW * 8."""
    kh, kw = kernel_shape
    return kh * kw * words_per_tap(channels) * 8


def conv_output_hw(
    hw: tuple[int, int],
    kernel_shape: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
) -> tuple[int, int]:
    """(OH, OW) as for ONNX Conv with explicit pads; raises ValueError when a dim is empty."""
    out = []
    for i in range(2):
        span = dilations[i] * (kernel_shape[i] - 1) + 1
        room = hw[i] + pads[i] + pads[i + 2] - span
        if room < 0:
            raise ValueError(
                f"XnorConv: kernel span {span} exceeds the padded input size "
                f"{hw[i] + pads[i] + pads[i + 2]} along axis {i + 2}"
            )
        out.append(room // strides[i] + 1)
    return out[0], out[1]


# onnxruntime-extensions hands a Python custom op only int, float or string attributes, so the
# converter writes the integer-list attributes above once more in this one string attribute,
# which is what the registered op reads (see runtime/custom_ops.py).
CONV_ATTRS = "conv_attrs"  # string mirror of the contract's integer-list attributes
_LIST_ATTRS = (ATTR_KERNEL_SHAPE, ATTR_STRIDES, ATTR_PADS, ATTR_DILATIONS)
_LENGTHS = {ATTR_KERNEL_SHAPE: 2, ATTR_STRIDES: 2, ATTR_PADS: 4, ATTR_DILATIONS: 2}


def encode_conv_attrs(
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
) -> str:
    """'kernel_shape=3,3;strides=1,1;pads=1,1,1,1;dilations=1,1;group=1'."""
    values = dict(zip(_LIST_ATTRS, (kernel_shape, strides, pads, dilations)))
    parts = [f"{k}={','.join(str(int(v)) for v in values[k])}" for k in _LIST_ATTRS]
    return ";".join([*parts, f"{ATTR_GROUP}={int(group)}"])


def decode_conv_attrs(text: str) -> dict[str, object]:
    """Inverse of ``encode_conv_attrs``; missing keys take the contract's defaults.

    Every value is checked as ``check_conv_attrs`` does (count, range, group == 1): a ValueError
    names the entry, so no decoded geometry can reach a kernel unchecked."""
    shown = text if len(text) <= 200 else text[:200] + "..."
    out: dict[str, object] = dict(DEFAULTS)
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or key not in (*_LIST_ATTRS, ATTR_GROUP) or key in seen:
            why = "repeated" if key in seen else "bad"
            raise ValueError(f"XnorConv: {why} {CONV_ATTRS} entry {part[:80]!r} in {shown!r}")
        seen.add(key)
        try:
            nums = tuple(int(v) for v in value.split(","))
        except ValueError:
            raise ValueError(
                f"XnorConv: {CONV_ATTRS} entry {part[:80]!r} is not a list of integers"
            ) from None
        if key == ATTR_GROUP:
            if len(nums) != 1:
                raise ValueError(f"XnorConv: {ATTR_GROUP} needs 1 value, got {value[:80]!r}")
            out[key] = nums[0]
        elif len(nums) != _LENGTHS[key]:
            raise ValueError(f"XnorConv: {key} needs {_LENGTHS[key]} values, got {value[:80]!r}")
        else:
            out[key] = nums
    if ATTR_KERNEL_SHAPE not in out:
        raise ValueError(f"XnorConv: {CONV_ATTRS} {shown!r} lacks {ATTR_KERNEL_SHAPE}")
    checked = check_conv_attrs(*(out[k] for k in _LIST_ATTRS), group=out[ATTR_GROUP])
    out.update(zip(_LIST_ATTRS, checked))
    return out


def decode_op_attrs(mode: str, conv_attrs: str) -> dict[str, object]:
    """The string attributes the runtime op receives (``mode``, ``conv_attrs``), decoded and
    checked: the geometry of ``decode_conv_attrs`` plus ``mode``; ValueError on any problem."""
    out = decode_conv_attrs(conv_attrs)
    out[ATTR_MODE] = check_op_mode(mode)
    return out
