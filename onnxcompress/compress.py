"""The end-to-end job behind `onnxcompress compress`: load → normalize → passes → write → report.

Only orchestration lives here: every helper it uses sits in a lower layer (io, data, graph,
calibration, report), and nothing below imports this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import onnx_graphsurgeon as gs

from . import data as D
from . import registry
from .calibration import Calibration
from .errors import BadInputError, UnsupportedModelError
from .exits import ExitTable
from .files import check_outputs
from .graph import exported_size, iter_weights, to_graph, to_light_model
from .io import file_size, write_output
from .normalize import normalize_file
from .passes.base import Context, PassReport
from .pipeline import Step, run, with_budget
from .recipe import load_recipe
from .report import bench
from .report.stats import (
    Evaluator,
    Report,
    StageRow,
    coding_summary,
    exit_indices,
    exit_rows,
    exit_table,
    layer_rows,
    original_weights,
    pass_summary,
    unknown_op_types,
)
from .runtime import Session

log = logging.getLogger(__name__)


def compress(input_path: str | Path, output_path: str | Path, *,
             recipe: str | Path | list[Step] = "deep-compression",
             calib: str | Path | None = None, eval_data: str | Path | None = None,
             max_accuracy_drop: float | None = None, measure_latency: bool = True,
             progress: Callable[[str], None] = lambda m: None) -> Report:
    """Compress `input_path` into `output_path` (.onnx or .onnxc) and return the report."""
    input_path, output_path = Path(input_path), Path(output_path)
    check_outputs([("output", output_path)],
                  [("model", input_path), ("calibration file", calib), ("evaluation file", eval_data)])
    steps = recipe if isinstance(recipe, list) else load_recipe(recipe)
    progress(f"loading {input_path}")
    # the weights come as numpy arrays beside a proto without them: one copy of the model
    model, arrays = normalize_file(input_path)
    specs = D.input_specs(model)
    calib_ds = D.load_dataset(calib, specs, what="calibration") if calib else None
    eval_ds = D.load_dataset(eval_data, specs, what="evaluation") if eval_data else None
    graph = to_graph(model, arrays)
    del arrays  # the graph holds them now
    if not iter_weights(graph):
        raise UnsupportedModelError(f"{input_path}: no prunable layer (Conv, Gemm or MatMul with a "
                                    "constant weight); nothing to compress")
    # one session per file serves scoring and the latency measurement
    base_sess = Session(input_path, threads=1) if (eval_ds or measure_latency) else None
    base_run = D.first_output(base_sess) if base_sess else None
    base_size = file_size(input_path)
    report = Report(model=str(input_path), output=str(output_path),
                    unknown_ops=unknown_op_types(model, registry.known_ops()),
                    budget=max_accuracy_drop)
    evaluator = None
    if eval_ds is not None:
        progress("scoring the uncompressed model")
        evaluator = Evaluator(eval_ds, D.predict(base_run, eval_ds))
        report.stages.append(evaluator.stage("original", base_size, base_size, base_run))
    else:
        report.stages.append(StageRow("original", base_size, 1.0))
    calibration = Calibration(calib_ds, graph.outputs[0].name) if calib_ds else None
    ctx = Context(calibration, progress)
    steps = [with_budget(s, max_accuracy_drop) for s in steps]
    exit_stages: list[str] = []  # stages whose graph has early exits

    def after_step(step: Step, pass_report: PassReport) -> None:
        report.notes.extend(f"{step.name}: {n}" for n in pass_report.notes)
        if ExitTable.from_doc(graph.doc_string) is not None:
            exit_stages.append(step.stage)
        report.passes.append(pass_summary(pass_report))
        if evaluator:
            m = gs.export_onnx(graph, do_type_check=False)
            run_m = D.first_output(Session(m.SerializeToString(), threads=1))
            report.stages.append(evaluator.stage(step.stage, m.ByteSize(), base_size, run_m))
        else:  # the size alone: no copy of the weights
            size = exported_size(graph)
            report.stages.append(StageRow(step.stage, size, base_size / size))

    try:
        run(graph, steps, ctx, after_step)
    except BadInputError as e:  # name the user's file
        raise type(e)(f"{input_path}: {e}") from e
    progress(f"writing {output_path}")
    # the weights stay the graph's arrays (no proto copy of them) until they are written
    sizes_before = original_weights(model)
    final, arrays = to_light_model(graph, like=model)
    graph = model = calibration = ctx = None
    creport = write_output(final, output_path, arrays)
    out_size = file_size(output_path)
    out_sess = Session(output_path, threads=1) if (evaluator or measure_latency) else None
    if creport is not None:
        report.container = coding_summary(creport)
        report.stages.append(
            evaluator.stage("packed", out_size, base_size, D.first_output(out_sess))
            if evaluator else StageRow("packed", out_size, base_size / out_size))
    stored = {t.name: t.stored_bytes for t in creport.tensors} if creport else None
    codecs = {t.name: t.codec for t in creport.tensors} if creport else None
    report.layers = layer_rows(final, stored, codecs, sizes_before, arrays=arrays)
    table = exit_table(final)
    if table is not None:
        _exit_report(report, table, out_sess, eval_ds, evaluator, [*exit_stages, "packed"])
    if measure_latency:
        feeds = (calib_ds or eval_ds).feeds if (calib_ds or eval_ds) else D.zero_feeds(specs)
        progress("timing batch-1 latency")
        last = report.stages[-1].stage
        if table is None:
            report.latency_ms["original"] = bench.latency_ms(base_sess, feeds)
            report.latency_ms[last] = bench.latency_ms(out_sess, feeds)
        else:  # the cost depends on the input: the mean over samples, and batch-64 throughput
            feeds = eval_ds.feeds if eval_ds is not None else feeds  # unseen samples first
            for stage, sess in (("original", base_sess), (last, out_sess)):
                report.latency_ms[stage] = bench.mean_latency_ms(sess, feeds)
                report.throughput[stage] = bench.throughput(sess, feeds)
    report.judge()
    return report


def _exit_report(report: Report, table: ExitTable, sess: Session, eval_ds: D.Dataset | None,
                 evaluator: Evaluator | None, stages: list[str]) -> None:
    """Exit statistics of a model with early exits: per exit on the evaluation data (else as
    planned on held-out calibration data), and the expected FLOPs of the stages that have them."""
    taken = outputs = None
    if eval_ds is not None and sess is not None:
        taken = exit_indices(sess, eval_ds, table.output)
        outputs = D.predict(D.first_output(sess), eval_ds)
    report.exit_criterion = table.criterion
    report.exits, flops = exit_rows(table, taken, outputs,
                                    evaluator.reference if evaluator else None,
                                    eval_ds.labels if eval_ds is not None else None)
    report.stages[0].flops = table.model_flops
    for row in report.stages[1:]:
        row.flops = flops if row.stage in stages else None
