"""`onnxcompress report`: describe a (compressed) model, side by side with its baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import data as D
from .. import metrics as M
from .. import registry
from ..container import is_container, stored_tensors
from ..graph import to_graph
from ..io import file_size, load_any
from ..runtime import Session
from . import bench
from .stats import (
    Evaluator,
    Report,
    StageRow,
    exit_indices,
    exit_rows,
    exit_table,
    layer_rows,
    original_weights,
    unknown_op_types,
)


def compare(model_path: str | Path, baseline: str | Path | None = None,
            eval_data: str | Path | None = None, *, measure_latency: bool = True,
            metric: str | None = None, output: str | None = None) -> Report:
    """Describe `model_path` (a model or a container), side by side with `baseline`; scores
    its output `output` by `metric` on `eval_data` (defaults: see metrics.py)."""
    model = load_any(model_path)
    base_model = load_any(baseline) if baseline else None
    specs = D.input_specs(base_model or model)
    ds = D.load_dataset(eval_data, specs, what="evaluation") if eval_data else None
    graph = to_graph(base_model or model)
    scored = M.scored_output(graph, output)
    chosen = M.choose_metric(graph, scored, bool(ds and ds.labels is not None), metric,
                             bool(ds and ds.targets is not None))
    sections = stored_tensors(model_path) if is_container(model_path) else None
    stored = {name: size for name, (_, size) in sections.items()} if sections else None
    codecs = {name: codec for name, (codec, _) in sections.items()} if sections else None
    rep = Report(model=str(baseline or model_path), output=str(model_path),
                 scored_output=scored, metric=chosen.value, units=M.UNITS[chosen],
                 unknown_ops=unknown_op_types(model, registry.known_ops()),
                 layers=layer_rows(model, stored, codecs,
                                   original_weights(base_model) if base_model else None,
                                   feeds=ds.feeds if ds else None))
    size = file_size(model_path)
    base_size = file_size(baseline) if baseline else size
    # one session per file serves scoring and the latency measurement
    sess = Session(model_path, threads=1)
    base_sess = Session(baseline, threads=1) if baseline else None
    run = D.output_of(sess, scored)
    ev = None
    if ds is not None:
        base_run = D.output_of(base_sess, scored) if base_sess else run
        ev = Evaluator(ds, D.predict(base_run, ds), chosen)
        if chosen in (M.Metric.TOP1, M.Metric.AGREEMENT):
            D.check_labels(ds, int(np.prod(ev.reference.shape[1:])), f"evaluation file {eval_data}")
        if base_model:
            rep.stages.append(ev.stage("baseline", base_size, base_size, base_run))
        rep.stages.append(ev.stage("model", size, base_size, run))
    else:
        if base_model:
            rep.stages.append(StageRow("baseline", base_size, 1.0))
        rep.stages.append(StageRow("model", size, base_size / size))
    table = exit_table(model)
    if table is not None:
        _exits(rep, table, sess, ds, ev)
    if measure_latency:
        feeds = ds.feeds if ds else D.zero_feeds(specs)
        timed = [("baseline", base_sess)] if base_sess else []
        for stage, s in [*timed, ("model", sess)]:
            if table is None:
                rep.latency_ms[stage] = bench.latency_ms(s, feeds)
            else:  # the cost depends on the input: the mean over samples, and throughput
                rep.latency_ms[stage] = bench.mean_latency_ms(s, feeds)
                rep.throughput[stage] = bench.throughput(s, feeds)
    if base_model:
        rep.judge()
    return rep


def _exits(rep: Report, table, sess: Session, ds: D.Dataset | None,
           ev: Evaluator | None) -> None:
    """Exit statistics of a model with early exits: measured on `ds`, else as planned."""
    taken = outputs = None
    if ds is not None:
        taken = exit_indices(sess, ds, table.output)
        outputs = D.predict(D.output_of(sess), ds)
    rep.exit_criterion = table.criterion
    rep.exits, flops = exit_rows(table, taken, outputs, ev.reference if ev else None,
                                 ds.labels if ds is not None else None)
    rep.stages[-1].flops = flops
    if len(rep.stages) > 1:
        rep.stages[0].flops = table.model_flops
