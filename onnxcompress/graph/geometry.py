"""Convolution geometry: kernel, strides, explicit pads, dilations and group of a Conv node.

ONNX lets a Conv state its padding as `auto_pad` (SAME_UPPER, SAME_LOWER, VALID) instead of
`pads`; every user here (statistics, refit, binarization, cost) needs explicit pads, which for
SAME depend on the input's spatial size:

    total_i = max((ceil(size_i / s_i) - 1) * s_i + (k_i - 1) * d_i + 1 - size_i, 0)

split in half, the odd pixel at the end (SAME_UPPER) or the beginning (SAME_LOWER).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx_graphsurgeon as gs


class GeometryError(ValueError):
    """The node's geometry cannot be made explicit (e.g. SAME padding on an unknown size)."""


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # ONNX layout: begin_1 .. begin_d, end_1 .. end_d
    dilations: tuple[int, ...]
    group: int = 1

    @property
    def rank(self) -> int:
        return len(self.kernel)

    def output_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Output spatial size (floor mode, as ONNX defines it)."""
        d = self.rank
        return tuple(
            (size + self.pads[i] + self.pads[d + i] - self.dilations[i] * (self.kernel[i] - 1) - 1)
            // self.strides[i] + 1
            for i, size in enumerate(spatial))


def _ints(node: gs.Node, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    v = node.attrs.get(key)
    return tuple(int(x) for x in v) if v is not None and len(v) else default


def _auto_pad(node: gs.Node) -> str:
    auto = node.attrs.get("auto_pad", "NOTSET")
    return auto.decode() if isinstance(auto, bytes) else str(auto)


def conv_geometry(node: gs.Node, spatial: Sequence[int | None] | None = None) -> ConvGeometry:
    """The explicit geometry of a Conv-like node (Conv, ConvTranspose's kernel attributes,
    pooling). `spatial` is the input's spatial size, needed only for SAME auto-padding;
    the kernel comes from `kernel_shape`, else from the weight's shape."""
    kernel = _ints(node, "kernel_shape", ())
    if not kernel and len(node.inputs) > 1 and node.inputs[1].shape is not None:
        kernel = tuple(int(k) for k in node.inputs[1].shape[2:])
    if not kernel:
        raise GeometryError(f"{node.op} '{node.name}': no kernel_shape and no weight shape")
    d = len(kernel)
    strides = _ints(node, "strides", (1,) * d)
    dilations = _ints(node, "dilations", (1,) * d)
    group = int(node.attrs.get("group", 1))
    auto = _auto_pad(node)
    if auto in ("NOTSET", ""):
        pads = _ints(node, "pads", (0,) * (2 * d))
    elif auto == "VALID":
        pads = (0,) * (2 * d)
    else:
        if spatial is None or len(spatial) != d or not all(isinstance(s, int) for s in spatial):
            raise GeometryError(f"auto_pad={auto} needs a known input height and width to "
                                "write explicit pads")
        pads = same_pads(auto, spatial, kernel, strides, dilations)
    return ConvGeometry(kernel, strides, pads, dilations, group)


def same_pads(auto: str, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> tuple[int, ...]:
    begins, ends = [], []
    for size, k, s, dil in zip(spatial, kernel, strides, dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * dil + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else large)
        ends.append(large if auto == "SAME_UPPER" else small)
    return tuple(begins + ends)
