"""The calibration-statistics service: one per run, shared by every pass and every search.

Statistics collection is separate from the algorithms that use it (NNCF's lesson). A
`Calibration` holds the run's calibration data (and its fixed even/odd split into a part the
passes fit on and a held-out part the searches score on), and `Snapshot`s: frozen copies of the
graph as a pass found it, each with a cache of what was captured from it (reference outputs,
intermediate activations, their means). A pass asks for the snapshot of the graph it starts
from; if an earlier pass (or the run itself) already asked about the same graph, it gets the
same snapshot and its captures come free.

Scoring (`Scorer`, in the run's metric: metrics.py) runs the live graph in one ONNX Runtime session per graph structure, with
the weights fed as inputs, so a search over many candidate weights builds one session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..data import Dataset
from ..metrics import Metric, score
from .runner import GraphSession, structure_key

log = logging.getLogger(__name__)

CACHE_BYTES = 1 << 30  # captured activations kept in memory per snapshot; beyond, recomputed
MIN_HOLDOUT = 100  # samples per half below which the calibration set is not split


def variable_tensors(graph: gs.Graph) -> list[str]:
    """Float initializers of more than one element: what passes change."""
    return [t.name for t in graph.tensors().values()
            if isinstance(t, gs.Constant) and np.asarray(t.values).dtype.kind == "f"
            and np.asarray(t.values).size > 1]


def _fingerprint(graph: gs.Graph) -> tuple:
    """Structure plus the identity of every constant's array: passes replace arrays, never
    write into them (originals are frozen read-only), so equal fingerprints mean equal graphs
    while the snapshot keeps the arrays alive."""
    consts = tuple(sorted((t.name, id(t.values)) for t in graph.tensors().values()
                          if isinstance(t, gs.Constant)))
    return structure_key(graph), consts


@dataclass
class Snapshot:
    """The graph as it was when first asked about, and what was captured from it."""

    graph: gs.Graph
    threads: int | None = 1
    _captured: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    _means: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    _bytes: int = 0

    def batches(self, data: Dataset, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """The named tensors over `data`, a batch at a time; captured once and kept while the
        snapshot's cache has room (CACHE_BYTES), else recomputed on each call."""
        names = list(dict.fromkeys(names))
        missing = [n for n in names if (data.key, n) not in self._captured]
        sess = GraphSession(self.graph, missing, threads=self.threads) if missing else None
        parts: dict[str, list[np.ndarray]] | None = {n: [] for n in missing}
        batch = data.batch
        for start in range(0, len(data), batch):
            out = {n: self._captured[(data.key, n)][start : start + batch]
                   for n in names if n not in missing}
            if sess is not None:
                got = sess.run({k: v[start : start + batch] for k, v in data.feeds.items()})
                out.update(got)
                if parts is not None and start == 0:
                    batches_left = -(-len(data) // batch)
                    if self._bytes + sum(a.nbytes for a in got.values()) * batches_left \
                            > CACHE_BYTES:
                        parts = None  # too big to keep: recomputed on the next call
                if parts is not None:
                    for n in missing:
                        parts[n].append(got[n])
            yield out
        if parts:
            for n, chunks in parts.items():
                arr = np.concatenate(chunks)
                self._captured[(data.key, n)] = arr
                self._bytes += arr.nbytes

    def means(self, data: Dataset, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Mean over the samples of each named tensor, float64 (cached)."""
        todo = [n for n in dict.fromkeys(names) if (data.key, n) not in self._means]
        if todo:
            sums: dict[str, np.ndarray] = {}
            for captured in self.batches(data, todo):
                for n, arr in captured.items():
                    part = np.asarray(arr, dtype=np.float64).sum(axis=0)
                    sums[n] = sums[n] + part if n in sums else part
            for n, s in sums.items():
                self._means[(data.key, n)] = s / len(data)
        return {n: self._means[(data.key, n)] for n in names}

    def outputs(self, data: Dataset, output: str) -> np.ndarray:
        """The snapshot's output `output` over all samples of `data` (cached)."""
        return np.concatenate([b[output] for b in self.batches(data, [output])])


class Scorer:
    """score(graph): the metric of `output` on `data` (higher is better, in the metric's units;
    see metrics.py), against `reference` (the uncompressed model's outputs), the data's labels
    or its targets. One ONNX Runtime session per graph structure."""

    def __init__(self, data: Dataset, output: str, metric: Metric, *,
                 reference: np.ndarray | None = None, threads: int | None = 1):
        if reference is None and metric not in (Metric.TOP1, Metric.PSNR):
            raise ValueError(f"metric {metric.value} needs the reference outputs")
        if metric is Metric.TOP1 and data.labels is None:
            raise ValueError("metric top1 needs labels")
        self.data, self.output, self.metric, self.threads = data, output, metric, threads
        self.reference = reference
        self._session: GraphSession | None = None
        self.sessions = 0  # sessions built (a search should build one)

    def outputs(self, graph: gs.Graph) -> np.ndarray:
        sess = self._session
        if sess is None or sess.graph is not graph or sess.key != structure_key(graph):
            sess = self._session = GraphSession(graph, [self.output],
                                                variable_tensors(graph), self.threads)
            self.sessions += 1
        parts = [b[self.output] for b in sess.batches(self.data)]
        return np.concatenate(parts)

    def __call__(self, graph: gs.Graph) -> float:
        return score(self.metric, self.outputs(graph), self.reference, self.data.labels,
                     self.data.targets)


class Calibration:
    """A run's calibration data, its fit/held-out split, and the snapshots of its graphs."""

    def __init__(self, data: Dataset, output: str, metric: Metric = Metric.AGREEMENT, *,
                 threads: int | None = 1):
        self.data, self.output, self.metric, self.threads = data, output, metric, threads
        self._snapshots: dict[tuple, Snapshot] = {}
        self._split: tuple[Dataset, Dataset] | None = None
        self._memo: dict[tuple, object] = {}

    @property
    def labels(self) -> np.ndarray | None:
        return self.data.labels

    def snapshot(self, graph: gs.Graph) -> Snapshot:
        """The frozen state of `graph` now, shared with anyone who asked about the same graph."""
        key = _fingerprint(graph)
        snap = self._snapshots.get(key)
        if snap is None:
            snap = self._snapshots[key] = Snapshot(graph.copy(), self.threads)
            log.debug("calibration: new snapshot (%d in all)", len(self._snapshots))
        return snap

    def on(self, data: Dataset) -> Calibration:
        """The same run's service on other data (a part of it): its own snapshots and split,
        the same memory of expensive results."""
        other = Calibration(data, self.output, self.metric, threads=self.threads)
        other._memo = self._memo
        return other

    def memo(self, key: tuple, compute):
        """compute(), once per key for the run: a search applies the same expensive step
        (k-means of an unchanged table …) to the same values in many trials."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def can_split(self) -> bool:
        return len(self.data) >= 2 * MIN_HOLDOUT

    def split(self) -> tuple[Dataset, Dataset]:
        """(fit, held): the even samples and the odd ones, the same objects on every call."""
        if self._split is None:
            self._split = (self.data.subset(slice(0, None, 2), "fit"),
                           self.data.subset(slice(1, None, 2), "held"))
        return self._split

    def scorer(self, reference: Snapshot, data: Dataset | None = None) -> Scorer:
        """A scorer of the run's metric on `data` (default: all calibration samples), against
        the outputs of the `reference` snapshot (and the data's labels or targets)."""
        data = data or self.data
        return Scorer(data, self.output, self.metric,
                      reference=reference.outputs(data, self.output), threads=self.threads)
