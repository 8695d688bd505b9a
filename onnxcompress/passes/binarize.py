"""Binarization: XNOR-Net and Binary-Weight-Networks (Rastegari, Ordonez, Redmon & Farhadi,
"XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks", ECCV 2016).

Method. A Conv with weights W [M, C, KH, KW] (2-D, group 1) is approximated per output channel
m by W[m] ~ alpha[m] * B[m], B = sgn(W) in {-1, +1}, where the least-squares optimal scale is
alpha[m] = ||W[m]||_1 / n = mean |W[m]| (the paper's eq. 4). Then

    bwn  (Binary-Weight-Networks):  Y = alpha * conv(X, B) + b
    xnor (XNOR-Net):                Y = alpha * conv(sgn(X), B) + b

with sgn(v) = +1 for v >= 0 (zero included) and -1 otherwise, as in ``onnxcompress.ops``. The
paper's input scale K is off by default, as in recent binary engines. With ``input_scaling``
(mode xnor, post-training layers only: a layer trained binary had no K), each output position is
also scaled by the mean |X| over the channels and the kernel window it reads (the paper's
K = A * k, A = mean_c |X|, k = the 1/(KH KW) box filter, with the conv's strides, pads and
dilations), computed in both forms by one float Conv of |X| with a constant 1/(C KH KW) filter:

    Y = (conv(sgn(X), B) * alpha) * K + b

(native: XnorConv with bias 0, then Mul K and Add b; portable: Conv, Mul alpha, Mul K, Add b;
bit-identical). BatchNormalization
and the bias are already folded into W and b by normalization (a per-channel factor k commutes
with sgn: sgn(kW) alpha(kW) = k sgn(W) alpha(W)), so b and alpha form the op's output transform.

Calibration refit (post-training layers, when calibration data is given): the output transform
is re-estimated per channel by least squares against the float layer's outputs, layer by layer
in topological order on the already-binarized upstream (as bias correction does in the prune
pass): (alpha[m], b[m]) = argmin sum (Y_float - (a D + c))^2 over samples and positions, where
D = conv(sgn(X), B) (xnor) or conv(X, B) (bwn). This absorbs the missing K. In mode xnor the
refit also centers the inputs of post-training layers (``center_inputs``): the op reads
X - t with t[c] the mean of channel c on the calibration data, a fixed per-channel threshold
like ReActNet's RSign (Liu et al., ECCV 2020). Without it a layer fed by ReLU sees sgn = +1
almost everywhere and carries no information; padded taps still contribute 0 (the op's zero
padding), an approximation the refit of b absorbs on average.

Models trained binary. A layer whose weights take exactly the values +-a[m] per output channel
is binarized without approximation (alpha = a, the same bits). In mode xnor, a layer whose
input is the output of ONNX ``Sign`` also has binary inputs already; such a layer, trained
binary, is lowered with no change to its outputs beyond float rounding. ONNX Sign(0) = 0 while
mode xnor's sgn(0) = +1, so with ``exact_zero`` (the default) an input that is exactly 0 still
contributes 0: the portable form keeps the Sign node, and the native form is one XnorConv in the
op's mode "sign" (ONNX Sign inputs), bit-identical to the portable form. The kernel computes it
through the identity

    conv(Sign(x), B) = (conv(sgn(x), B) - conv(sgn(-x), B)) / 2

as one XOR/popcount GEMM over the channels [x, -x] (twice the binary work of mode xnor),
or as mode xnor itself when the call's input has no exact 0 or NaN (the same bits).
``exact_zero=False`` uses mode xnor on x and differs only where a Sign input is 0.0.

Which layers (``layers``):
- ``all``: every Conv that can be binarized (others are listed in the notes);
- names (or fnmatch patterns): exactly those; one that cannot be binarized is an error naming why;
- ``auto``: every Conv except the first and the last weight layer of the model (XNOR-Net keeps
  them in float), minus those that cannot be binarized (listed in the notes). Trained-binary
  layers are always taken (they lose nothing). With a calibration score, each other layer is
  binarized ALONE (with the refit) and kept only if the top-1 score drops by at most
  ``tolerance`` points; without one, all are taken and a note warns.

Fully connected layers (Gemm, MatMul) are left in float: XnorConv is a 2-D convolution, and
XNOR-Net keeps the classifier in float; naming one is an error.

Targets: the pass always builds the portable standard-ONNX form of ``onnxcompress.ops`` first
(so calibration runs on plain ONNX Runtime), then, for ``native``, replaces each block by the
``XnorConv`` custom op with bit-packed weights.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .. import ops
from ..calibration import GraphSession, Snapshot
from ..data import Dataset
from ..errors import BadInputError
from ..graph import GeometryError, Weight, conv_geometry, find_node, iter_weights
from ..kernels.xnor_ref import pack_weights
from ..scope import Scope
from .base import Context, PassReport
from .binarize_forms import Layer, Mode, box_filter, lower_native, lower_portable

__all__ = ["Config", "Layer", "Mode", "Target", "analyze", "run", "select"]

log = logging.getLogger(__name__)

NAME = "binarize"
STAGE = "binarized"
BUDGET_KEY = None
EMITS_OPS = frozenset({ops.XNOR_CONV, "Sign", "Where", "GreaterOrEqual"})
AUTO, ALL = "auto", "all"
EPS = 1e-9


class Target(str, enum.Enum):
    NATIVE = "native"
    PORTABLE = "portable"


@dataclass(frozen=True)
class Config:
    """Settings of the binarize pass (see the module docstring)."""

    mode: Mode = Mode.XNOR
    target: Target = Target.NATIVE
    layers: str | tuple[str, ...] = AUTO  # "auto", "all", or layer names / patterns
    input_scaling: bool = False  # XNOR-Net's input scale K (mode xnor, post-training layers)
    tolerance: float = 1.0  # auto + calibration: max top-1 drop (points) of one layer alone
    refit: bool = True  # with calibration data: least-squares alpha and bias per channel
    exact_zero: bool = True  # keep ONNX Sign(0) = 0 exact for layers trained binary
    center_inputs: bool = True  # xnor + calibration: binarize sgn(x - channel mean of x)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "target", Target(self.target))
        layers = self.layers
        if isinstance(layers, str) and layers not in (AUTO, ALL):
            layers = tuple(p.strip() for p in layers.split(",") if p.strip())
        elif not isinstance(layers, str):
            layers = tuple(str(v) for v in layers)
        if not layers:
            raise ValueError("layers must be 'auto', 'all' or at least one layer name")
        object.__setattr__(self, "layers", layers)
        if self.input_scaling and self.mode is not Mode.XNOR:
            raise ValueError("input_scaling (XNOR-Net's K) scales binarized inputs: mode 'xnor' only")
        if self.tolerance < 0:
            raise ValueError(f"tolerance is in points of top-1 and must be >= 0, got {self.tolerance}")


# ----------------------------------------------------------------------------- analysis


def _const(t: gs.Tensor) -> np.ndarray | None:
    """Value of a constant tensor, also through Sign / Mul / Identity of constants."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if len(t.inputs) != 1:
        return None
    p = t.inputs[0]
    vals = [_const(i) for i in p.inputs]
    if any(v is None for v in vals) or not vals:
        return None
    if p.op == "Sign" and len(vals) == 1:
        return np.sign(vals[0])
    if p.op == "Mul" and len(vals) == 2:
        return vals[0] * vals[1]
    if p.op == "Identity":
        return vals[0]
    return None


def binary_scale(w: np.ndarray) -> np.ndarray | None:
    """a[m] if every weight of output channel m is +a[m] or -a[m], else None."""
    flat = np.abs(w.reshape(w.shape[0], -1))
    a = flat[:, 0]
    return a.astype(np.float32) if np.all(flat == a[:, None]) else None


def analyze(node: gs.Node, mode: Mode) -> tuple[Layer | None, str]:
    """The binarization plan of one node, or None and the reason it cannot be binarized."""
    where = f"{node.op} '{node.name}'"
    if node.op in ("Gemm", "MatMul"):
        return None, (f"{where} is fully connected: the binarize pass handles Conv only "
                      "(XnorConv is a 2-D convolution); fully connected layers stay in float")
    if node.op != "Conv":
        return None, f"{where} is not a Conv"
    wt = node.inputs[1] if len(node.inputs) > 1 else None
    w = _const(wt) if wt is not None else None
    if w is None:
        src = wt.inputs[0].name if wt is not None and wt.inputs else "a graph input"
        return None, f"expected a constant weight for {where}, got the output of {src}"
    if w.ndim != 4:
        return None, f"{where} is a {w.ndim - 2}-D convolution; XnorConv is 2-D only"
    if not np.issubdtype(w.dtype, np.floating):
        return None, f"weight of {where} is {w.dtype}, not floating point"
    group = int(node.attrs.get("group", 1))
    if group != 1:
        kind = "depthwise" if group == w.shape[0] and w.shape[1] == 1 else f"grouped (group={group})"
        return None, f"{where} is a {kind} convolution; XnorConv supports group=1 only"
    bias = np.zeros(w.shape[0], np.float32)
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
        b = _const(node.inputs[2])
        if b is None:
            return None, f"{where}: bias is not a constant"
        bias = np.broadcast_to(np.asarray(b, np.float32).reshape(-1), (w.shape[0],)).copy()
    x_shape = node.inputs[0].shape
    try:
        geo = conv_geometry(node, x_shape[2:] if x_shape is not None and len(x_shape) == 4
                            else None)
    except GeometryError as e:
        return None, f"{where}: {e}"
    kernel, strides, pads, dilations = geo.kernel, geo.strides, geo.pads, geo.dilations
    x = node.inputs[0]
    producer = x.inputs[0] if len(x.inputs) == 1 else None
    from_sign = mode is Mode.XNOR and producer is not None and producer.op == "Sign"
    return Layer(node=node, weight=w.astype(np.float32), bias=bias,
                 source=producer.inputs[0] if from_sign else x, from_sign=from_sign,
                 scale=binary_scale(w), kernel=kernel, strides=strides, pads=pads,
                 dilations=dilations, name=node.name, mode_bwn=mode is Mode.BWN), ""


# ----------------------------------------------------------------------------- selection


def select(graph: gs.Graph, cfg: Config, notes: list[str]) -> list[Layer]:
    """The layers to binarize under `cfg.layers` (auto: before the calibration screen)."""
    weights: list[Weight] = iter_weights(graph)
    convs = [n for n in graph.nodes if n.op == "Conv"]
    if cfg.layers == ALL or cfg.layers == AUTO:
        protected = ({weights[0].node.name, weights[-1].node.name} if cfg.layers == AUTO
                     and weights else set())
        out = []
        for node in convs:
            if node.name in protected:
                notes.append(f"kept in float: '{node.name}' (first or last weight layer)")
                continue
            layer, why = analyze(node, cfg.mode)
            if layer is None:
                notes.append(f"skipped: {why}")
            else:
                out.append(layer)
        return out
    layers = []
    candidates = [n for n in graph.nodes if n.op in ("Conv", "Gemm", "MatMul")]
    for node in Scope(include=cfg.layers).select(candidates, lambda n: (n.name,), "layer"):
        layer, why = analyze(node, cfg.mode)
        if layer is None:
            raise BadInputError(f"cannot binarize layer '{node.name}': {why}")
        layers.append(layer)
    return layers


# ----------------------------------------------------------------------------- calibration refit


def refit(graph: gs.Graph, reference: Snapshot, data: Dataset, layers: list[Layer],
          ctx: Context, mode: Mode, exact_zero: bool) -> dict[str, str]:
    """Least-squares (alpha, B) per channel for each lossy portable layer, in topological
    order, against the float model's layer outputs; returns layer -> what was done. One
    session over the lowered graph serves the sweep (the output transforms are its inputs)."""
    from ..kernels.xnor_native import xnor_conv

    thresholds = [la.built["threshold"] for la in layers if la.built["threshold"] is not None]
    variable = [t.name for la in layers for t in (la.built["alpha"], la.built["B"])]
    captured = [la.source.name for la in layers] + [la.built["raw"].name for la in layers
                                                     if la.built["threshold"] is not None]
    sess = GraphSession(graph, captured, variable + [t.name for t in thresholds])
    done: dict[str, str] = {}
    for i, layer in enumerate(layers):
        ctx.progress(f"binarize: refit {i + 1}/{len(layers)} {layer.name}")
        if layer.built["threshold"] is not None:  # t = per-channel mean of the current input
            raw = layer.built["raw"].name
            mean = sess.means(data)[raw]
            layer.built["threshold"].values = (
                mean.reshape(mean.shape[0], -1).mean(axis=1).astype(np.float32).reshape(1, -1, 1, 1))
        out = layer.built["out"].name
        targets = (b[out] for b in reference.batches(data, [out]))
        inputs = (b[layer.source.name] for b in sess.batches(data))
        m = layer.weight.shape[0]
        s = np.zeros((5, m))  # n, sum d, sum y, sum dd, sum dy
        for y, x in zip(targets, inputs):
            sign_kept = mode is Mode.XNOR and layer.from_sign and exact_zero
            d = xnor_conv(np.sign(x) if sign_kept else x, layer.built["bits"],
                          np.ones(m, np.float32), None, kernel_shape=layer.kernel,
                          strides=layer.strides, pads=layer.pads, dilations=layer.dilations,
                          mode="bwn" if sign_kept else mode.value)
            if layer.built["k"]:
                d = d * _k_numpy(layer, x)
            d64, y64 = (np.moveaxis(v, 1, 0).reshape(m, -1).astype(np.float64) for v in (d, y))
            s += [np.full(m, d64.shape[1]), d64.sum(1), y64.sum(1), (d64 * d64).sum(1),
                  (d64 * y64).sum(1)]
        alpha, bias = _fit(s, np.asarray(layer.built["alpha"].values, np.float64).reshape(m))
        layer.built["alpha"].values = alpha.astype(np.float32).reshape(1, m, 1, 1)
        layer.built["B"].values = bias.astype(np.float32).reshape(1, m, 1, 1)
        done[layer.name] = "least-squares alpha and bias" + (
            ", inputs centered on their channel means" if layer.built["threshold"] is not None else "")
    return done


def _k_numpy(layer: Layer, x: np.ndarray) -> np.ndarray:
    """K of a batch: bwn XnorConv with all-(+1) weights sums |x| over the window."""
    from ..kernels.xnor_native import xnor_conv

    box = box_filter(layer)
    bits, _ = pack_weights(box)
    return xnor_conv(np.abs(x), bits, np.array([box.flat[0]], np.float32), None,
                     kernel_shape=layer.kernel, strides=layer.strides, pads=layer.pads,
                     dilations=layer.dilations, mode="bwn")


def _fit(s: np.ndarray, alpha0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel a, c minimizing sum (y - a d - c)^2 from the sums; a = alpha0 when d is flat."""
    n, sd, sy, sdd, sdy = s
    var = n * sdd - sd * sd
    ok = var > EPS * np.maximum(n * sdd, 1.0)
    a = np.where(ok, (n * sdy - sd * sy) / np.where(ok, var, 1.0), alpha0)
    return a, (sy - a * sd) / np.maximum(n, 1)


# ----------------------------------------------------------------------------- the pass


def _lower_all(graph: gs.Graph, layers: list[Layer], cfg: Config, ctx: Context,
               reference: Snapshot | None) -> dict[str, str]:
    """Portable lowering of `layers` in `graph`, then the refit of the lossy ones."""
    refitting = cfg.refit and reference is not None and ctx.calibration is not None
    for layer in layers:
        lower_portable(graph, layer, cfg.mode, cfg.exact_zero, cfg.input_scaling,
                       center=refitting and cfg.center_inputs)
    graph.cleanup().toposort()
    lossy = [layer for layer in layers if not layer.exact]
    if refitting and lossy:
        return refit(graph, reference, ctx.calibration.data, lossy, ctx, cfg.mode,
                     cfg.exact_zero)
    return {}


def _screen(graph: gs.Graph, layers: list[Layer], cfg: Config, ctx: Context,
            facts: dict[str, dict[str, Any]], notes: list[str]) -> list[Layer]:
    """auto with a score: keep each lossy layer whose drop, binarized alone, fits tolerance."""
    reference = ctx.calibration.snapshot(graph)
    score = ctx.calibration.scorer(reference)
    base = score(graph)
    kept = []
    for i, layer in enumerate(layers):
        if layer.exact:
            kept.append(layer)
            continue
        trial = graph.copy()
        alone, _ = analyze(find_node(trial, layer.name), cfg.mode)
        _lower_all(trial, [alone], cfg, ctx, reference)
        drop = base - score(trial.cleanup().toposort())
        ctx.progress(f"binarize: scan {i + 1}/{len(layers)} {layer.name} drop={drop:+.2f}")
        facts[layer.name] = {"drop_alone": round(drop, 3)}
        if drop <= cfg.tolerance + EPS:
            kept.append(layer)
        else:
            notes.append(f"kept in float: '{layer.name}' (binarized alone it costs {drop:.2f} "
                         f"points > tolerance {cfg.tolerance:g})")
    notes.append(f"auto: base score {base:.2f} ({ctx.calibration.metric.value})")
    return kept


def run(graph: gs.Graph, cfg: Config, ctx: Context) -> PassReport:
    """Binarize the selected Conv layers of `graph` in place; see the module docstring."""
    report = PassReport(NAME, modified=False)
    layers = select(graph, cfg, report.notes)
    facts: dict[str, dict[str, Any]] = {}
    if cfg.layers == AUTO and layers and ctx.calibration is not None:
        layers = _screen(graph, layers, cfg, ctx, facts, report.notes)
    elif cfg.layers == AUTO and any(not layer.exact for layer in layers):
        report.notes.append("auto without calibration data: every eligible layer binarized, "
                            "none screened for its accuracy cost")
    if not layers:
        report.notes.append("no layer binarized")
        return report
    reference = ctx.calibration.snapshot(graph) if ctx.calibration and cfg.refit else None
    if ctx.calibration is None and any(not layer.exact for layer in layers):
        report.notes.append("WARNING: no calibration data: post-training layers use alpha = "
                            "mean|W| and the float bias; expect a large accuracy loss, above "
                            "all in mode xnor")
    refitted = _lower_all(graph, layers, cfg, ctx, reference)
    if cfg.target is Target.NATIVE:
        for layer in layers:
            lower_native(graph, layer, cfg.mode, cfg.exact_zero)
    graph.cleanup().toposort()
    for layer in layers:
        report.per_tensor[layer.name] = _facts(layer, cfg, refitted, facts.get(layer.name, {}))
    report.modified = True
    report.notes.insert(0, f"mode {cfg.mode.value}, target {cfg.target.value}: binarized "
                        f"{len(layers)} layer(s): {', '.join(la.name for la in layers)}")
    return report


def _facts(layer: Layer, cfg: Config, refitted: Mapping[str, str], extra: dict) -> dict[str, Any]:
    w = layer.weight
    how = ("trained binary (exact)" if layer.exact else
           refitted.get(layer.name, "alpha = mean|W|, float bias"))
    op = ops.XNOR_CONV if cfg.target is Target.NATIVE else "Conv"
    return {"layer": layer.name, "op": op, "mode": cfg.mode.value, "shape": list(w.shape),
            "params": int(w.size), "bits": 1, "packed_bytes": int(layer.built["bits"].nbytes),
            "trained_binary": layer.exact, "input_from_sign": layer.from_sign,
            "input_scaling": bool(layer.built["k"]),
            "output_transform": how, **extra}

