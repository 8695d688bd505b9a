"""Least-squares refit of a compressed layer against the reference layer's outputs.

Refit (kernels/refit.py; AdaPrune, Hubara et al. 2021; OBC, Frantar & Alistarh 2022): the
kept weights and the bias of a pruned layer are re-estimated by ridge least squares so that the
layer, fed its input in the compressed model, reproduces the REFERENCE layer's outputs on the
reference input. Only Gram matrices of the input rows (im2col patches for a Conv) are
accumulated, one calibration pass per layer.

A grouped convolution is G independent layers: output channels of group g read only the input
channels of group g, so each group gets its own Gram and its own solve. A depthwise filter
(group = channels) is thus a 10-unknown least-squares problem per channel (its 3x3 taps and its
bias) on the patches of its one input channel: cheap, and exact for what it can express.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..calibration.segments import incremental_inputs
from ..calibration.service import Snapshot
from ..data import Dataset
from ..graph import Weight, conv_geometry
from ..kernels.bias import conv_output_size
from ..kernels.refit import (
    Ridge,
    im2col,
    masked_lstsq,
    quantize_lstsq,
    ridge_optimum,
)
from .bias import BiasSlot, correction_unsupported, layer_input, layer_stat, output_mean

MAX_REFIT_INPUTS = 4096  # fan-in above this makes the Gram too big: bias correction instead
# input rows (positions) used per calibration sample, at most: 16,384 per batch of 256; a model
# with a fixed batch of 1 would otherwise give every sample all its positions (3,136 for a
# 56x56 layer) and its Grams would cost 50 times more for no better fit
ROWS_PER_SAMPLE = 64
GROUP_BLOCK_BYTES = 64 << 20  # float64 rows of the groups multiplied in one batched product
GATHER_BYTES = 32 << 20  # sampled rows of a layer gathered before their Gram is taken


def refit_unsupported(w: Weight) -> str:
    """Why the least-squares refit cannot handle this layer, or '' if it can."""
    reason = correction_unsupported(w)
    if reason:
        return reason
    fan_in = w.to_rows(w.values).shape[1]
    if fan_in > MAX_REFIT_INPUTS:
        return f"{w.node.op} '{w.node.name}': fan-in {fan_in} exceeds {MAX_REFIT_INPUTS} for refit"
    return ""


def input_rows(w: Weight, x: np.ndarray, pick: np.ndarray | slice = slice(None)
               ) -> np.ndarray:
    """The layer's input rows (im2col patches for a Conv, else the last axis), or the rows
    `pick` selects of them (a Conv builds only those)."""
    if w.node.op != "Conv":
        return x.reshape(-1, x.shape[-1])[pick]
    geo = conv_geometry(w.node, x.shape[2:])
    if isinstance(pick, slice):
        return im2col(x, geo.kernel, geo.strides, geo.pads, geo.dilations)[pick]
    return im2col(x, geo.kernel, geo.strides, geo.pads, geo.dilations, rows=pick)


def row_count(w: Weight, x: np.ndarray) -> int:
    """How many input rows `input_rows` gives for x."""
    if w.node.op != "Conv":
        return x.size // x.shape[-1]
    geo = conv_geometry(w.node, x.shape[2:])
    d = len(geo.kernel)
    return x.shape[0] * int(np.prod([
        conv_output_size(x.shape[2 + i], geo.kernel[i], geo.strides[i], geo.pads[i],
                         geo.pads[d + i], geo.dilations[i]) for i in range(d)]))


def groups(w: Weight) -> int:
    return int(w.node.attrs.get("group", 1)) if w.node.op == "Conv" else 1


def _by_group(w: Weight, rows: np.ndarray) -> np.ndarray:
    """(G, N, fan-in per group): a grouped conv's input rows split by group (its columns are
    channel-major, so each group's channels are one contiguous block)."""
    g = groups(w)
    return rows.reshape(rows.shape[0], g, -1).transpose(1, 0, 2)


def _gram(x: np.ndarray) -> np.ndarray:
    """(G, f+1, f+1) Grams of grouped rows (G, N, f) with the ones column last, in float64."""
    return _normal_terms(x)[0]


def _group_blocks(x: np.ndarray) -> list[slice]:
    """Blocks of groups converted to float64 at once (a depthwise layer has hundreds of
    1-channel groups: one batched product per block, not one per group)."""
    g, n, f = x.shape
    block = max(1, GROUP_BLOCK_BYTES // max(1, n * f * 8))
    return [slice(start, start + block) for start in range(0, g, block)]


def _block_gram(xs: np.ndarray) -> np.ndarray:
    """Grams with the ones column last of float64 grouped rows xs (B, N, f)."""
    _, n, f = xs.shape
    gram = np.empty((xs.shape[0], f + 1, f + 1))
    gram[:, :f, :f] = xs.transpose(0, 2, 1) @ xs
    gram[:, :f, f] = gram[:, f, :f] = xs.sum(axis=1)
    gram[:, f, f] = n
    return gram


def _normal_terms(x: np.ndarray, y: np.ndarray | None = None, weights: np.ndarray | None = None,
                  bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The Grams of grouped rows x (G, N, f) with the ones column last, and, given the
    reference rows y (G, N, f), `weights` (G, O/G, f) and `bias` (G, O/G), their cross terms
    with the reference outputs y @ weights.T + bias, [X 1]^T (Y W^T + 1 b^T): (G, f+1, O/G),
    through the outputs (2 N f O multiply-adds; a layer with more outputs than half its
    fan-in goes through X^T Y instead: `_input_moments`). In float64, a block of groups at a
    time."""
    g, _, f = x.shape
    gram = np.empty((g, f + 1, f + 1))
    cross = None if y is None else np.empty((g, f + 1, weights.shape[1]))
    for at in _group_blocks(x):
        xs = x[at].astype(np.float64)
        gram[at] = _block_gram(xs)
        if cross is not None:
            y_out = y[at].astype(np.float64) @ weights[at].transpose(0, 2, 1) + bias[at, None, :]
            cross[at, :f] = xs.transpose(0, 2, 1) @ y_out
            cross[at, f] = y_out.sum(axis=1)
    return gram, cross


def _input_moments(blocks: Iterable[tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over blocks of grouped (compressed, reference) input rows: the Grams with the ones
    column last, X^T Y and the column sums of Y, float64: what the cross terms of every layer
    reading these rows are made of (`_from_moments`), whatever its weights."""
    gram = xty = y_sum = 0.0
    for x, y in blocks:
        g, _, f = x.shape
        gram_part, xty_part = np.empty((g, f + 1, f + 1)), np.empty((g, f, y.shape[2]))
        for at in _group_blocks(x):
            xs = x[at].astype(np.float64)
            gram_part[at] = _block_gram(xs)
            xty_part[at] = xs.transpose(0, 2, 1) @ y[at].astype(np.float64)
        gram, xty = gram + gram_part, xty + xty_part
        y_sum = y_sum + y.sum(axis=1, dtype=np.float64)
    return gram, xty, y_sum


def _from_moments(gram: np.ndarray, xty: np.ndarray, y_sum: np.ndarray, weights: np.ndarray,
                  bias: np.ndarray) -> np.ndarray:
    """The cross terms of `_normal_terms` from `_input_moments`: N f^2 for the moments, then
    f^2 O, where through the outputs costs 2 N f O."""
    f = xty.shape[1]
    wt = weights.transpose(0, 2, 1)
    cross = np.empty((len(gram), f + 1, weights.shape[1]))
    cross[:, :f] = xty @ wt + gram[:, :f, f][:, :, None] * bias[:, None, :]
    cross[:, f] = (y_sum[:, None, :] @ wt)[:, 0] + gram[:, f, f][:, None] * bias
    return cross


def _solve(w: Weight, gram: np.ndarray, cross: np.ndarray, keep_rows: np.ndarray, damp: float,
           prior: np.ndarray, codebook: np.ndarray | None = None, quick: bool = False,
           ridges: list[Ridge] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The refit group by group (gram (G, f+1, f+1), cross (G, f+1, O/G)): masked least
    squares, or, with a codebook, least squares onto its values (GPTQ's sweep). `ridges`:
    the groups' `ridge_optimum`s, when one layer is refit many times on the same data."""
    per = keep_rows.shape[0] // len(gram)

    def one(g: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(g * per, (g + 1) * per)
        ridge = ridges[g] if ridges else None
        if codebook is None:
            return masked_lstsq(gram[g], cross[g], keep_rows[rows], damp, prior=prior[rows],
                                quick=quick, ridge=ridge)
        book = codebook[codebook != 0] * w.gain  # the values in the refit's scaled space
        return quantize_lstsq(gram[g], cross[g], keep_rows[rows], book, damp,
                              prior=prior[rows], ridge=ridge)

    parts = [one(g) for g in range(len(gram))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _pick(w: Weight, x: np.ndarray, seed: int) -> np.ndarray | slice:
    """The input rows of a batch `x` the layer's statistics use (a seeded sample when the
    batch has more than ROWS_PER_SAMPLE per sample)."""
    n, cap = row_count(w, x), ROWS_PER_SAMPLE * x.shape[0]
    if n <= cap:
        return slice(None)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def layer_grams(snapshot: Snapshot, weights: Sequence[Weight], data: Dataset
                ) -> dict[str, np.ndarray]:
    """Weight name -> Grams (G, f+1, f+1) of its layer's reference input rows, one per group
    (ones column last)."""
    grams: dict[str, np.ndarray] = {}
    pending = {w.tensor.name: _Rows() for w in weights}
    names = [layer_input(w).name for w in weights]
    for k, captured in enumerate(snapshot.batches(data, names)):
        for w in weights:
            x = captured[layer_input(w).name]
            full = pending[w.tensor.name].add(_by_group(w, input_rows(w, x, _pick(w, x, k))))
            if full is not None:
                grams[w.tensor.name] = grams.get(w.tensor.name, 0.0) + _gram(*full)
    for name, rows in pending.items():
        if (rest := rows.take()) is not None:
            grams[name] = grams.get(name, 0.0) + _gram(*rest)
    return grams


class _Rows:
    """Sampled rows of a few batches gathered into one block before their Gram is taken: a
    model with a fixed batch of 1 gives 64 rows per batch, and a Gram product per batch would
    write the whole (f+1)² matrix for every 64 rows."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.bytes = 0

    def add(self, *grouped: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """Keep these (G, N, f) rows (and their partners); the gathered block once it holds
        GATHER_BYTES."""
        self.parts.append(grouped)
        self.bytes += sum(a.nbytes for a in grouped)
        return self.take() if self.bytes >= GATHER_BYTES else None

    def take(self) -> tuple[np.ndarray, ...] | None:
        if not self.parts:
            return None
        if len(self.parts) == 1:  # one batch filled it: nothing to gather
            block = self.parts[0]
        else:
            block = tuple(np.concatenate(arrays, axis=1) for arrays in zip(*self.parts))
        self.parts, self.bytes = [], 0
        return block


class Alone:
    """Refits of one layer whose input is unchanged (targets: its own original outputs), for
    many masks or codebooks: what they share is computed once."""

    def __init__(self, w: Weight, slot: BiasSlot, gram: np.ndarray, before: np.ndarray,
                 bias_before: np.ndarray, damp: float):
        self.w, self.slot, self.gram, self.damp = w, slot, gram, damp
        self.rows = w.to_rows(before).astype(np.float64) * w.gain
        full = np.hstack([self.rows, (bias_before * slot.scale)[:, None]])
        per = self.rows.shape[0] // len(gram)
        self.cross = np.stack([gram[g] @ full[g * per:(g + 1) * per].T
                               for g in range(len(gram))])
        self._ridges: list[Ridge] | None = None

    def ridges(self) -> list[Ridge]:
        if self._ridges is None:
            per = self.rows.shape[0] // len(self.gram)
            self._ridges = [ridge_optimum(self.gram[g], self.cross[g], self.damp,
                                          self.rows[g * per:(g + 1) * per])
                            for g in range(len(self.gram))]
        return self._ridges

    def fit(self, keep: np.ndarray, codebook: np.ndarray | None = None,
            quick: bool = False) -> None:
        """Refit to `keep` (and onto `codebook`); `quick`: an estimate for searches."""
        ridges = self.ridges() if quick or codebook is not None else None
        _set_fit(self.w, self.slot, *_solve(self.w, self.gram, self.cross,
                                            self.w.to_rows(keep), self.damp, self.rows,
                                            codebook, quick, ridges))


def _set_fit(w: Weight, slot: BiasSlot, rows: np.ndarray, bias: np.ndarray) -> None:
    w.set_values(w.from_rows(rows / w.gain))
    slot.tensor.values = (bias / slot.scale).astype(np.asarray(slot.tensor.values).dtype)


@dataclass
class Refit:
    """One layer of a refit sweep; `keep` None means bias correction only (mean statistic);
    a `codebook` restricts the refit weights to its values."""

    weight: Weight
    slot: BiasSlot
    before: np.ndarray
    bias_before: np.ndarray
    keep: np.ndarray | None = None
    stat_before: np.ndarray | None = None
    codebook: np.ndarray | None = None


def refit_sweep(graph: gs.Graph, layers: Sequence[Refit], snapshot: Snapshot, data: Dataset,
                damp: float = 0.01, threads: int | None = 1,
                progress: Callable[[str], None] = lambda m: None) -> dict[str, np.ndarray]:
    """Refit (or bias-correct) each layer in topological order against the reference outputs,
    on its input in the current compressed graph; returns weight name -> bias change. Each
    layer's input, in the compressed graph and in the reference, is computed from the previous
    layer's on (segments.py): one pass over each model for the whole sweep (asking the snapshot
    for each layer's reference input would run the reference up to that layer every time when
    its activations are too big to cache)."""
    changes: dict[str, np.ndarray] = {}
    last: dict[tuple, tuple] = {}
    inputs = incremental_inputs(graph, [c.weight.node for c in layers], data, threads)
    reference_nodes = {n.name: n for n in snapshot.graph.nodes}
    references = incremental_inputs(
        snapshot.graph, [reference_nodes[c.weight.node.name] for c in layers], data, threads)
    for i, (c, (_, now), (_, was)) in enumerate(zip(layers, inputs, references)):
        progress(f"refit {i + 1}/{len(layers)} {c.weight.layer}")
        name = layer_input(c.weight).name
        x_now = [b[name] for b in now]
        if c.keep is None:
            mean = sum(x.astype(np.float64).sum(axis=0) for x in x_now) / len(data)
            c.slot.shift(output_mean(c.weight, c.before, c.stat_before)
                         - output_mean(c.weight, c.weight.values, layer_stat(c.weight, mean)))
        else:
            gram, cross = _normal_equations(c, x_now, (b[name] for b in was), last)
            prior = c.weight.to_rows(c.before).astype(np.float64) * c.weight.gain
            fit = _solve(c.weight, gram, cross, c.weight.to_rows(c.keep), damp, prior,
                         c.codebook)
            _set_fit(c.weight, c.slot, *fit)
        changes[c.weight.tensor.name] = (
            np.asarray(c.slot.tensor.values, dtype=np.float64) - c.bias_before
        ) * c.slot.scale
    return changes


def _normal_equations(c: Refit, now: Sequence[np.ndarray], was: Iterable[np.ndarray],
                      last: dict[tuple, tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Grams of the compressed input rows and their cross terms with the reference outputs,
    per group: (G, f+1, f+1) and (G, f+1, O/G). When the cross terms go through X^T Y
    (`_input_moments`), what they share with the previous layer of the sweep on the same input (the
    query, key and value projections of attention) is taken from `last` (`_rows_key` -> the
    layer-independent terms), and left there for the next."""
    w = c.weight
    g = groups(w)
    target = w.to_rows(c.before).astype(np.float64) * w.gain
    target = target.reshape(g, target.shape[0] // g, -1)
    bias = (c.bias_before.astype(np.float64) * c.slot.scale).reshape(g, -1)

    def picked():
        for k, (x_now, x_was) in enumerate(zip(now, was)):
            pick = _pick(w, x_now, k)
            yield (_by_group(w, input_rows(w, x_now, pick)),
                   _by_group(w, input_rows(w, x_was, pick)))

    if not _through_inputs(target.shape[1], target.shape[2]):
        gram = cross = 0.0
        for block in _gathered(picked()):
            g_part, c_part = _normal_terms(*block, target, bias)
            gram, cross = gram + g_part, cross + c_part
        return gram, cross
    rows = _rows_key(w)
    if rows not in last:
        last.clear()
        last[rows] = _input_moments(_gathered(picked()))
    gram, xty, y_sum = last[rows]
    return gram, _from_moments(gram, xty, y_sum, target, bias)


def _rows_key(w: Weight) -> tuple:
    """What a layer's input rows are made of: its input tensor, and for a Conv how its patches
    are cut (two convs on one tensor with other strides or kernels have other rows)."""
    return (layer_input(w).name, w.node.op,
            tuple(sorted((k, repr(v)) for k, v in w.node.attrs.items())))


def _through_inputs(outputs: int, fan_in: int) -> bool:
    """Whether a layer's cross terms are cheaper through X^T Y than through its outputs."""
    return 2 * outputs > fan_in


def _gathered(parts: Iterable[tuple[np.ndarray, ...]]) -> Iterator[tuple[np.ndarray, ...]]:
    """The batches' grouped rows (and their partners) gathered into blocks of GATHER_BYTES,
    the last block whatever it holds."""
    rows = _Rows()
    for part in parts:
        if (block := rows.add(*part)) is not None:
            yield block
    if (rest := rows.take()) is not None:
        yield rest
