"""How much of its answer a compressed model keeps: which output carries the answer, which metric
measures it, and the score, in the units of the accuracy budget.

Every metric is a score where higher is better; the budget (`--max-accuracy-drop`) bounds the
score of the uncompressed model minus the score of the compressed one, in the metric's units:

    top1       % of samples whose argmax is the label                  (points)
    agreement  % of samples whose argmax is the uncompressed model's   (points; it scores 100)
    cosine     100 x mean cosine similarity to the uncompressed output  (points; it scores 100)
    mse        -100 x sum |y - y0|^2 / sum |y0|^2, relative error       (percent; it scores 0)
    psnr       10 log10(peak^2 / mean (y - t)^2) against `targets`     (dB)

The scored output: `--output NAME`, else the first float output that depends on the weights
(an integer pass-through of the inputs or a constant is no evidence of anything), the one of
lowest rank when there are several (a pooled sentence embedding before per-token vectors). The
metric, unless given: top1 with labels, agreement for class scores (a linear head or a
softmax, as in every classifier), cosine for a pooled or L2-normalized vector, mse otherwise.
"""

from __future__ import annotations

import enum

import numpy as np
import onnx_graphsurgeon as gs

from .errors import BadInputError
from .graph import weight_of

SHAPE_OPS = frozenset({"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Cast"})
CLASS_HEADS = frozenset({"Softmax", "LogSoftmax", "Gemm", "MatMul", "GlobalAveragePool",
                         "GlobalMaxPool", "Conv"})
REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceL2", "ReduceMax", "LpNormalization"})
# what lies between a reduction and the Div of a mean or a normalization
NORM_OPS = frozenset({"Clip", "Sqrt", "Max", "Expand", "Add"})


class Metric(str, enum.Enum):
    TOP1 = "top1"
    AGREEMENT = "agreement"
    COSINE = "cosine"
    MSE = "mse"
    PSNR = "psnr"


UNITS = {Metric.TOP1: "points of top-1 accuracy", Metric.AGREEMENT: "points of top-1 agreement",
         Metric.COSINE: "points of cosine similarity (x100)",
         Metric.MSE: "percent of relative squared error", Metric.PSNR: "dB of PSNR"}
LABELS = {Metric.TOP1: "top-1 %", Metric.AGREEMENT: "agree %", Metric.COSINE: "cosine x100",
          Metric.MSE: "-rel.err %", Metric.PSNR: "PSNR dB"}


def top1(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(len(outputs), -1).argmax(axis=1)


def score(metric: Metric, outputs: np.ndarray, reference: np.ndarray,
          labels: np.ndarray | None = None, targets: np.ndarray | None = None) -> float:
    """The metric of `outputs` (higher is better; see the module docstring)."""
    if metric is Metric.TOP1:
        return float((top1(outputs) == labels).mean() * 100)
    if metric is Metric.AGREEMENT:
        return float((top1(outputs) == top1(reference)).mean() * 100)
    y = outputs.reshape(len(outputs), -1).astype(np.float64)
    y0 = reference.reshape(len(reference), -1).astype(np.float64)
    if metric is Metric.COSINE:
        norms = np.linalg.norm(y, axis=1) * np.linalg.norm(y0, axis=1)
        same = (y * y0).sum(axis=1)
        cos = np.where(norms > 0, same / np.where(norms > 0, norms, 1.0),
                       np.all(y == y0, axis=1).astype(np.float64))
        return float(cos.mean() * 100)
    if metric is Metric.MSE:
        energy = float((y0 * y0).sum())
        return -100.0 * float(((y - y0) ** 2).sum()) / (energy if energy > 0 else 1.0)
    t = targets.reshape(len(targets), -1).astype(np.float64)
    err = float(((y - t) ** 2).mean())
    peak = float(np.abs(t).max()) or 1.0
    return 100.0 if err == 0 else min(100.0, 10 * np.log10(peak * peak / err))


def drop(metric: Metric, outputs: np.ndarray, reference: np.ndarray,
         labels: np.ndarray | None = None, targets: np.ndarray | None = None) -> float:
    """Score of the uncompressed model minus that of `outputs`, in the metric's units."""
    return (score(metric, reference, reference, labels, targets)
            - score(metric, outputs, reference, labels, targets))


def distortion(metric: Metric, outputs: np.ndarray, reference: np.ndarray) -> float:
    """A smooth stand-in for the metric's drop, for searches: it grows with every change of the
    outputs, where a count of flipped argmaxes moves in steps. Class scores: 100 x mean
    KL(softmax(reference) || softmax(outputs)); cosine: 100 x (1 - mean cosine); otherwise:
    100 x relative squared error."""
    if metric in (Metric.TOP1, Metric.AGREEMENT):
        p = _log_probs(reference)
        q = _log_probs(outputs)
        value = float(100 * (np.exp(p) * (p - q)).sum(axis=1).mean())
    elif metric is Metric.COSINE:
        value = 100.0 - score(Metric.COSINE, outputs, reference)
    else:
        value = -score(Metric.MSE, outputs, reference)
    # non-negative in exact arithmetic; rounding can make an unchanged output read as slightly
    # negative, which would rank a damaging setting above leaving the layer alone
    return max(0.0, value)


def _log_probs(x: np.ndarray) -> np.ndarray:
    """Log-probabilities of class scores: logits through log-softmax; rows that already are
    probabilities (non-negative, summing to 1) through log."""
    x = x.reshape(len(x), -1).astype(np.float64)
    if x.min() >= 0 and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return np.log(np.maximum(x, 1e-12))
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def standard_error(metric: Metric, outputs: np.ndarray, reference: np.ndarray,
                   labels: np.ndarray | None = None) -> float:
    """Standard error of the metric's drop over these samples: how far the drop measured on
    them may sit from the drop on the data the model will meet (paired: only samples whose
    answer changed count for argmax metrics)."""
    n = len(outputs)
    if metric is Metric.TOP1:
        changed = (top1(outputs) == labels) != (top1(reference) == labels)
        return float(100 * np.sqrt(changed.sum()) / n)
    if metric is Metric.AGREEMENT:
        return float(100 * np.sqrt((top1(outputs) != top1(reference)).sum()) / n)
    y = outputs.reshape(n, -1).astype(np.float64)
    y0 = reference.reshape(n, -1).astype(np.float64)
    if metric is Metric.COSINE:
        cos = (y * y0).sum(1) / np.maximum(np.linalg.norm(y, axis=1) * np.linalg.norm(y0, axis=1),
                                           1e-30)
        return float(100 * cos.std() / np.sqrt(n))
    per = ((y - y0) ** 2).sum(1) / max(float((y0 * y0).sum()) / n, 1e-30)
    return float(100 * per.std() / np.sqrt(n))


# ----------------------------------------------------------------------------- choosing


def depends_on_weights(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Whether some weight-bearing layer is upstream of `tensor`."""
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        for node in t.inputs:
            if node.name in seen:
                continue
            seen.add(node.name)
            if weight_of(node)[0] is not None:
                return True
            stack.extend(i for i in node.inputs if not isinstance(i, gs.Constant))
    return False


def _is_float(t: gs.Tensor) -> bool:
    try:
        return np.dtype(t.dtype).kind == "f"
    except TypeError:
        return False


def scored_output(graph: gs.Graph, name: str | None = None) -> str:
    """The output that carries the model's answer (see the module docstring)."""
    outputs = {t.name: t for t in graph.outputs}
    if name is not None:
        if name not in outputs:
            raise BadInputError(f"--output '{name}' is not an output of the model; its outputs "
                                f"are {', '.join(outputs)}")
        t = outputs[name]
        if not _is_float(t) or not depends_on_weights(graph, t):
            raise BadInputError(f"output '{name}' cannot change when weights do (an integer or "
                                "constant output, or one no weight reaches): it is no evidence "
                                "of fidelity; choose another --output")
        return name
    usable = [t for t in graph.outputs if _is_float(t) and depends_on_weights(graph, t)]
    if not usable:
        raise BadInputError("no output of the model carries a float answer computed from its "
                            f"weights (outputs: {', '.join(outputs)}); nothing to measure")
    rank = lambda t: len(t.shape) if t.shape is not None else 99
    return min(usable, key=rank).name


def _head(tensor: gs.Tensor, through: frozenset[str] = frozenset()) -> gs.Node | None:
    """The node that makes `tensor`, looking through shape-only ops (and `through`)."""
    while len(tensor.inputs) == 1:
        node = tensor.inputs[0]
        one_input = node.op == "Concat" and len(node.inputs) == 1
        if node.op not in SHAPE_OPS | through and not one_input:
            return node
        tensor = node.inputs[0]
    return None


def _pooled(node: gs.Node) -> bool:
    """A reduction over samples' positions, or a Div by one (a mean, an L2 normalization)."""
    if node.op in REDUCTIONS:
        return True
    if node.op != "Div":
        return False
    heads = [_head(t, NORM_OPS) for t in node.inputs if not isinstance(t, gs.Constant)]
    return any(h is not None and h.op in REDUCTIONS for h in heads)


def _linear_head(node: gs.Node) -> bool:
    if node.op in CLASS_HEADS:
        return True
    if node.op == "Add":  # MatMul + bias, the transformers' classifier
        return any(_head(t) is not None and _head(t).op in ("MatMul", "Gemm")
                   for t in node.inputs if not isinstance(t, gs.Constant))
    return False


def choose_metric(graph: gs.Graph, output: str, labels: bool,
                  metric: Metric | str | None = None, targets: bool = False) -> Metric:
    """The metric asked for (checked against the data), else the automatic choice."""
    t = next(o for o in graph.outputs if o.name == output)
    if metric is not None:
        metric = Metric(metric)
        if metric is Metric.TOP1 and not labels:
            raise BadInputError("--metric top1 needs 'labels' in the data files (class ids); "
                                "without them use agreement")
        if metric is Metric.PSNR and not targets:
            raise BadInputError("--metric psnr needs 'targets' in the data files (the outputs "
                                "the model should produce); without them use mse or cosine")
        return metric
    head = _head(t)
    rank = len(t.shape) if t.shape is not None else None
    if head is not None and _pooled(head):
        return Metric.COSINE
    if head is not None and rank == 2 and _linear_head(head):
        return Metric.TOP1 if labels else Metric.AGREEMENT
    return Metric.MSE

