"""Per-channel output means of linear layers from input means, for bias correction.

Bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019; Banner et al. 2019) keeps E[y_c] of each output channel unchanged
after the weights are perturbed. A Conv or a fully connected layer is linear in its input, so

    E_n,p[y_c] = sum_{j} W[c, j] * M[j]   (+ bias)

where M is the mean of the input patch seen at kernel offset j, averaged over samples n and
output positions p (zero padding included). M depends only on the mean input map E_n[x],
so one calibration pass per layer input gives the output means for ANY weights W. Pure numpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def conv_output_size(
    size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int
) -> int:
    """Output length of one spatial axis of a Conv (floor mode, as ONNX defines it)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def conv_patch_mean(
    mean_map: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> np.ndarray:
    """(C, *kernel): mean over output positions of the zero-padded input at each kernel offset.

    `mean_map` is the input averaged over samples, shape (C, *spatial); `pads` use the ONNX
    layout [begin_1 .. begin_d, end_1 .. end_d].
    """
    d = len(kernel)
    if mean_map.ndim != d + 1:
        raise ValueError(f"mean map of shape {mean_map.shape} does not fit a {d}-D kernel")
    begins, ends = pads[:d], pads[d:]
    padded = np.pad(mean_map, [(0, 0)] + [(b, e) for b, e in zip(begins, ends)])
    outs = [
        conv_output_size(
            mean_map.shape[i + 1], kernel[i], strides[i], begins[i], ends[i], dilations[i]
        )
        for i in range(d)
    ]
    result = np.empty((mean_map.shape[0], *kernel), dtype=np.float64)
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = (slice(None),) + tuple(
            slice(o * dil, o * dil + (n - 1) * s + 1, s)
            for o, dil, n, s in zip(offset, dilations, outs, strides)
        )
        result[(slice(None),) + offset] = padded[window].reshape(mean_map.shape[0], -1).mean(1)
    return result


def conv_output_mean(weight: np.ndarray, patch_mean: np.ndarray, group: int = 1) -> np.ndarray:
    """(O,) mean output per channel (bias excluded) of a Conv with weight (O, C/group, *k)."""
    o, cg = weight.shape[:2]
    w = weight.reshape(group, o // group, -1).astype(np.float64)
    m = patch_mean.reshape(group, cg, -1).reshape(group, -1)
    return np.einsum("gok,gk->go", w, m).reshape(o)


def fc_output_mean(weight: np.ndarray, mean_in: np.ndarray, trans_b: bool) -> np.ndarray:
    """(O,) mean output of y = x @ W (trans_b False, W is (K, O)) or x @ W.T (W is (O, K))."""
    w = weight.astype(np.float64)
    return (w @ mean_in) if trans_b else (mean_in @ w)
