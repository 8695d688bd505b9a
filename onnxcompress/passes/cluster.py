"""k-means weight sharing (Han, Mao & Dally, "Deep Compression", ICLR 2016, section 3).

Method. The nonzero weights of each layer are clustered by 1-D k-means,

    min_c  sum_i |w_i - c_{a(i)}|^2,   a(i) = argmin_j |w_i - c_j|,

with centroids initialized LINEARLY between the layer's min and max nonzero weight (the paper
found linear initialization best: it keeps the rare large weights represented). Every weight is
then replaced by its centroid, so a layer holds at most 2**bits distinct values and can be
stored as `bits`-bit indices into a small float codebook. Defaults follow the paper: 8 bits
for Conv layers, 5 bits for fully connected ones (Gemm, MatMul).

Zeros. Pruned weights (exact zeros) are never clustered and stay exactly +0.0. When a layer has
zeros, codebook entry 0 is 0.0 and the nonzeros share at most 2**bits - 1 centroids, so the
whole dense index tensor (zeros included) fits in `bits` bits; a layer without zeros gets
2**bits centroids. Centroids left empty (e.g. inside the gap pruning leaves around zero) are
moved into the clusters with the largest error; unused entries are dropped from the codebook.

Speed. Clusters of sorted 1-D data are contiguous runs, so Lloyd's step is k binary searches
plus prefix sums on a sorted sample (`fit_samples` values); the assignment of all weights is
one `searchsorted` over the midpoints. A 100M-weight layer takes seconds (kernels/kmeans.py).

Forms. ``dense`` keeps float weights (values replaced by centroids); the container writer
turns them into indices later. ``gather`` stores a uint8 (uint16 above 8 bits) index
initializer and a float codebook and decodes in-graph with standard ops,

    W = Gather(codebook, Cast(indices, to=INT32))      (shape of W = shape of indices)

so the .onnx file itself shrinks and runs on stock ONNX Runtime with outputs identical to the
dense form. Gather form should be the last pass that edits weights: later passes see the
weight as a computed tensor, not a constant.

Embedding tables (a Gather's table) that were not pruned are shared by rows: each row keeps
its mean and standard deviation (float16 where they fit it, cast to float32 in the graph) and
one codebook serves the standardized values,

    E[r] = mean[r] + std[r] * codebook[indices[r]],

decoded in-graph by Gather, Mul and Add (ONNX Runtime folds it once when the session starts;
the container stores the indices Huffman-coded). Measured on paraphrase-MiniLM-L3-v2 at 5 bits
it halves the loss of one codebook for the whole table (cosine to the original 99.90 vs 99.80):
token rows differ in scale, and the LayerNormalization that follows forgives a row's mean.

With calibration data, layers the refit supports are fitted onto their codebook (GPTQ's sweep,
compensate/refit.py): each weight takes the codebook value that keeps the layer's outputs, not
the nearest one; the others get bias correction (Nagel et al. 2019; compensate/bias.py), which
restores each layer's per-channel output mean, layer by layer, after clustering.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..compensate import Compensator
from ..graph import Weight, fresh_name, iter_weights
from ..kernels.kmeans import index_dtype, rows_value, share_rows, share_weights
from ..kernels.masks import sparsity_of
from ..scope import Scope, resolve_table
from .base import Context, PassReport

log = logging.getLogger(__name__)

NAME = "cluster"
UNPRUNED_ZEROS = 0.01  # a table with fewer exact zeros than this share was not pruned
STAGE = "clustered"
BUDGET_KEY = None
EMITS_OPS: frozenset[str] = frozenset()
MAX_BITS = 16


class Form(str, enum.Enum):
    DENSE = "dense"
    GATHER = "gather"


@dataclass(frozen=True)
class Config:
    """Settings of the cluster pass (see the module docstring)."""

    # bits = log2 of the codebook size; a fraction sizes the codebook between powers of two
    bits_conv: float = 8  # bits per index for Conv weights
    bits_fc: float = 5  # bits per index for Gemm / MatMul weights
    bits_embedding: float = 5  # bits per index for embedding tables (a Gather's constant table)
    per_layer: Mapping[str, float] | None = None  # layer name / fnmatch pattern / '*' -> bits
    exclude: tuple[str, ...] = ()  # layers left unclustered (names or patterns)
    form: Form = Form.DENSE
    bias_correction: bool = True  # when calibration data is available
    refit: bool = True  # with calibration data: weights onto the codebook by least squares
    embedding_rows: bool = True  # embedding tables without zeros: shared by rows (see above)
    iterations: int = 1000  # max Lloyd iterations (each is O(k log n) on the sorted sample)
    fit_samples: int = 1 << 20  # k-means is fitted on at most this many sampled weights
    seed: int = 0  # sampling seed (only layers above fit_samples are sampled)

    def __post_init__(self) -> None:
        object.__setattr__(self, "form", Form(self.form))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        checks = {"bits_conv": self.bits_conv, "bits_fc": self.bits_fc,
                  "bits_embedding": self.bits_embedding}
        checks.update({f"per_layer['{k}']": v for k, v in (self.per_layer or {}).items()})
        for what, bits in checks.items():
            if isinstance(bits, bool) or not isinstance(bits, int | float) \
                    or not 1 <= bits <= MAX_BITS:
                raise ValueError(f"{what} must be a number in [1, {MAX_BITS}], got {bits!r}")
        if self.iterations < 1 or self.fit_samples < 2:
            raise ValueError("iterations must be >= 1 and fit_samples >= 2")


def layer_bits(weights: list[Weight], cfg: Config) -> dict[str, float]:
    """Weight name -> bits: per_layer entry (exact, pattern, '*'), else the kind's default."""
    table = resolve_table(weights, cfg.per_layer)
    default = {"conv": cfg.bits_conv, "fc": cfg.bits_fc, "embedding": cfg.bits_embedding}
    return {w.tensor.name: float(table[w.tensor.name].value) if w.tensor.name in table
            else float(default[w.kind]) for w in weights}


def run(graph: gs.Graph, cfg: Config, ctx: Context) -> PassReport:
    """Cluster the selected weights of `graph` in place; see the module docstring."""
    report = PassReport(NAME, modified=False)
    weights = iter_weights(graph)
    if weights and cfg.exclude:
        weights = Scope(exclude=cfg.exclude).select(weights)
    if not weights:
        report.notes.append("no Conv/Gemm/MatMul weight to cluster")
        return report
    bits = layer_bits(weights, cfg)
    before = {w.tensor.name: w.frozen_values() for w in weights}
    comp = None
    calibration = ctx.calibration
    if cfg.bias_correction and calibration is not None:
        comp = Compensator(
            graph,
            weights,
            calibration.snapshot(graph),
            calibration.data,
            refit=cfg.refit,
            notes=report.notes,
            originals=before,
            progress=lambda m: ctx.progress("cluster: " + m),
        )
    elif cfg.bias_correction:
        report.notes.append("bias correction skipped: no calibration data")
    books, rows = {}, {}
    for i, w in enumerate(weights):
        name = w.tensor.name
        ctx.progress(f"cluster: {i + 1}/{len(weights)} {w.layer} ({bits[name]:g} bits)")
        opts = {"iters": cfg.iterations, "fit_samples": cfg.fit_samples, "seed": cfg.seed}
        if cfg.embedding_rows and by_rows(w):
            rows[name] = _shared(ctx, share_rows, w.values, bits[name], opts)
            w.set_values(rows_value(*rows[name]))
            books[name] = rows[name][0]
            continue
        codebook, indices = _shared(ctx, share_weights, w.values, bits[name], opts)
        w.set_values(codebook[indices])
        books[name] = codebook
    shared = {n: b for n, b in books.items() if n not in rows}
    shifts = comp.sweep(weights, codebooks=shared if cfg.refit else None) if comp else {}
    if comp is not None:
        comp.finish()
    for w in weights:
        name = w.tensor.name
        report.per_tensor[name] = _facts(w, before[name], books[name], bits[name],
                                         "rows" if name in rows else cfg.form.value,
                                         comp.method(w) if name in shifts else "none")
        if name in shifts:
            report.per_tensor[name]["bias_shift"] = float(np.max(np.abs(shifts[name]),
                                                                 initial=0.0))
        if name in rows:
            to_rows_form(graph, w, *rows[name])
        elif cfg.form is Form.GATHER:
            to_gather(graph, w, books[name], _indices(w.values, books[name]))
    graph.cleanup().toposort()
    report.modified = True
    defaults = (f"bits conv {cfg.bits_conv:g}, fc {cfg.bits_fc:g}, embedding "
                f"{cfg.bits_embedding:g}")
    report.notes.append(f"form: {cfg.form.value}; "
                        + ("bits from the per-layer table" if cfg.per_layer else defaults))
    return report


def _shared(ctx: Context, share, values: np.ndarray, bits: float, opts: dict):
    """share(values, bits), remembered for the run by the values' digest (a search clusters
    the same unchanged tables in every trial)."""
    if ctx.calibration is None:
        return share(values, bits, **opts)
    digest = hashlib.blake2b(np.ascontiguousarray(values).data, digest_size=16).hexdigest()
    key = (share.__name__, digest, values.shape, bits, tuple(sorted(opts.items())))
    return ctx.calibration.memo(key, lambda: share(values, bits, **opts))


def by_rows(w: Weight) -> bool:
    """Whether an embedding table is shared by rows: 2-D and not pruned (a few exact zeros a
    trained table may hold do not count)."""
    return w.kind == "embedding" and w.values.ndim == 2 and unpruned(w.values)


def unpruned(values: np.ndarray) -> bool:
    return np.count_nonzero(values == 0) <= UNPRUNED_ZEROS * values.size


def _facts(
    w: Weight, before: np.ndarray, codebook: np.ndarray, bits: float, form: str, correction: str
) -> dict[str, Any]:
    after = w.values
    err2, ref2 = _sums_of_squares(after, before)
    rmse = float(np.sqrt(err2 / max(after.size, 1)))
    norm = float(np.sqrt(ref2 / max(after.size, 1))) or 1.0
    return {
        "layer": w.layer,
        "op": w.node.op,
        "kind": w.kind,
        "shape": list(after.shape),
        "params": int(after.size),
        "sparsity": sparsity_of(after),
        "bits": bits,
        "codebook_size": int(codebook.size),
        "distinct_nonzero": int(np.count_nonzero(codebook)),
        "rmse": rmse,
        "relative_rmse": rmse / norm,
        "form": form,
        "correction": correction,  # "refit" (least squares onto the codebook), "bias", "none"
    }


def _indices(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """The codebook index of every value (each value is exactly one of the codebook's)."""
    order = np.argsort(codebook)
    found = order[np.searchsorted(codebook[order], values)]
    return found.astype(index_dtype(codebook.size))


def _sums_of_squares(after: np.ndarray, before: np.ndarray, chunk: int = 1 << 22
                     ) -> tuple[float, float]:
    """sum((after - before)^2) and sum(before^2) in float64, a chunk at a time (float64
    temporaries of a whole 100 M-parameter layer would take GBs)."""
    a, b = after.reshape(-1), before.reshape(-1)
    err2 = ref2 = 0.0
    for i in range(0, a.size, chunk):
        bb = b[i : i + chunk].astype(np.float64)
        d = a[i : i + chunk] - bb
        err2 += float(np.dot(d, d))
        ref2 += float(np.dot(bb, bb))
    return err2, ref2


def to_rows_form(graph: gs.Graph, w: Weight, codebook: np.ndarray, indices: np.ndarray,
                 mean: np.ndarray, std: np.ndarray) -> None:
    """Replace a table shared by rows by Add(Mul(Gather(codebook, indices), std), mean)."""
    name = w.tensor.name
    decoded = to_gather(graph, w, codebook, indices, name=fresh_name(graph, name + "_z"))
    scaled = gs.Variable(fresh_name(graph, name + "_scaled"), dtype=np.float32)
    table = gs.Variable(name, dtype=np.float32, shape=list(indices.shape))
    consumers = list(decoded.outputs)
    graph.nodes.append(gs.Node("Mul", fresh_name(graph, name + "_std"), inputs=[
        decoded, _as_float32(graph, name + "_row_std", std)], outputs=[scaled]))
    graph.nodes.append(gs.Node("Add", fresh_name(graph, name + "_mean"), inputs=[
        scaled, _as_float32(graph, name + "_row_mean", mean)], outputs=[table]))
    for node in consumers:
        for i, t in enumerate(node.inputs):
            if t is decoded:
                node.inputs[i] = table


def _as_float32(graph: gs.Graph, name: str, values: np.ndarray) -> gs.Tensor:
    """A constant for float32 arithmetic: stored as it is, behind a Cast when narrower."""
    stored = gs.Constant(fresh_name(graph, name), values)
    if values.dtype == np.float32:
        return stored
    wide = gs.Variable(fresh_name(graph, name + "_f32"), dtype=np.float32,
                       shape=list(values.shape))
    graph.nodes.append(gs.Node("Cast", fresh_name(graph, name + "_cast"),
                               {"to": onnx.TensorProto.FLOAT}, inputs=[stored], outputs=[wide]))
    return wide


def to_gather(graph: gs.Graph, w: Weight, codebook: np.ndarray, indices: np.ndarray,
              name: str | None = None) -> gs.Variable:
    """Replace the constant weight by Gather(codebook, Cast(indices, INT32)) for every consumer
    (the decoded tensor takes the weight's name, or `name`); returns it."""
    name = name or w.tensor.name
    consumers = list(w.tensor.outputs)
    w.tensor.name = fresh_name(graph, w.tensor.name + "_dense")  # the old constant goes at cleanup
    cb = gs.Constant(fresh_name(graph, name + "_codebook"), codebook)
    ix = gs.Constant(fresh_name(graph, name + "_indices"), indices)
    ix32 = gs.Variable(
        fresh_name(graph, name + "_indices_i32"), dtype=np.int32, shape=list(indices.shape)
    )
    decoded = gs.Variable(name, dtype=codebook.dtype, shape=list(indices.shape))
    graph.nodes.append(
        gs.Node(
            "Cast",
            fresh_name(graph, name + "_cast"),
            {"to": onnx.TensorProto.INT32},
            inputs=[ix],
            outputs=[ix32],
        )
    )
    graph.nodes.append(
        gs.Node(
            "Gather",
            fresh_name(graph, name + "_decode"),
            {"axis": 0},
            inputs=[cb, ix32],
            outputs=[decoded],
        )
    )
    for node in consumers:
        for i, t in enumerate(node.inputs):
            if t is w.tensor:
                node.inputs[i] = decoded
    return decoded
