"""`onnxcompress report`: describe a (compressed) model, side by side with its baseline."""

from __future__ import annotations

from pathlib import Path

from .. import data as D
from .. import registry
from ..container import ContainerReport, is_container
from ..container.writer import encode_container
from ..io import file_size, load_any, tensor_kinds
from ..runtime import Session
from . import bench
from .stats import (
    Evaluator,
    Report,
    StageRow,
    coding_summary,
    exit_indices,
    exit_rows,
    exit_table,
    layer_rows,
    original_weights,
    unknown_op_types,
)


def compare(model_path: str | Path, baseline: str | Path | None = None,
            eval_data: str | Path | None = None, *, measure_latency: bool = True) -> Report:
    model = load_any(model_path)
    base_model = load_any(baseline) if baseline else None
    specs = D.input_specs(base_model or model)
    ds = D.load_dataset(eval_data, specs, what="evaluation") if eval_data else None
    creport = _container_report(model, model_path)
    stored = {t.name: t.stored_bytes for t in creport.tensors} if creport else None
    codecs = {t.name: t.codec for t in creport.tensors} if creport else None
    rep = Report(model=str(baseline or model_path), output=str(model_path),
                 unknown_ops=unknown_op_types(model, registry.known_ops()),
                 layers=layer_rows(model, stored, codecs,
                                   original_weights(base_model) if base_model else None))
    if creport is not None:
        rep.container = coding_summary(creport)
    size = file_size(model_path)
    base_size = file_size(baseline) if baseline else size
    # one session per file serves scoring and the latency measurement
    sess = Session(model_path, threads=1)
    base_sess = Session(baseline, threads=1) if baseline else None
    run = D.first_output(sess)
    ev = None
    if ds is not None:
        base_run = D.first_output(base_sess) if base_sess else run
        ev = Evaluator(ds, D.predict(base_run, ds))
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
    if base_model and rep.stages[0].accuracy is not None:
        rep.accuracy_drop = rep.stages[0].accuracy - rep.stages[-1].accuracy
    return rep


def _exits(rep: Report, table, sess: Session, ds: D.Dataset | None,
           ev: Evaluator | None) -> None:
    """Exit statistics of a model with early exits: measured on `ds`, else as planned."""
    taken = outputs = None
    if ds is not None:
        taken = exit_indices(sess, ds, table.output)
        outputs = D.predict(D.first_output(sess), ds)
    rep.exit_criterion = table.criterion
    rep.exits, flops = exit_rows(table, taken, outputs, ev.reference if ev else None,
                                 ds.labels if ds is not None else None)
    rep.stages[-1].flops = flops
    if len(rep.stages) > 1:
        rep.stages[0].flops = table.model_flops


def _container_report(model, path) -> ContainerReport | None:
    """Per-tensor coded sizes of a container: encoding is deterministic, so re-encode."""
    if not is_container(path):
        return None
    chunks, rows, graph_bytes = encode_container(model, tensor_kinds=tensor_kinds(model))
    return ContainerReport(str(path), sum(len(c) for c in chunks), graph_bytes, rows)

