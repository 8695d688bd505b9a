"""The end-to-end job behind `onnxcompress compress`: load → normalize → passes → write → report.

Only orchestration lives here: every helper it uses sits in a lower layer (io, data, graph,
calibration, report), and nothing below imports this module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import data as D
from . import metrics as M
from . import registry, search
from .calibration import Calibration
from .errors import BadInputError, UnsupportedModelError
from .exits import ExitTable
from .files import check_outputs
from .graph import exported_size, iter_weights, to_graph, to_light_model
from .graph.cost import infer_shapes
from .io import file_size, write_output
from .normalize import normalize_file
from .passes.base import Context, PassReport
from .pipeline import Step, run
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

# recipes that search per layer within the budget: (prune?, cluster?)
SEARCHES = {"auto": (True, True), "auto-prune": (True, False), "auto-cluster": (False, True)}


def compress(input_path: str | Path, output_path: str | Path, *,
             recipe: str | Path | list[Step] = "auto",
             calib: str | Path | None = None, eval_data: str | Path | None = None,
             max_accuracy_drop: float | None = None, measure_latency: bool = True,
             metric: str | None = None, output: str | None = None,
             progress: Callable[[str], None] = lambda m: None) -> Report:
    """Compress `input_path` into `output_path` (.onnx or .onnxc) and return the report.

    `recipe` "auto" (the default), "auto-prune" or "auto-cluster" search per layer for the
    smallest model within `max_accuracy_drop` (search/); any other recipe runs as written.
    Fidelity is measured on the model output `output` (default: the one that carries its
    answer) by `metric` (default: chosen from that output; see metrics.py)."""
    input_path, output_path = Path(input_path), Path(output_path)
    _check_budget(max_accuracy_drop, eval_data, calib)
    check_outputs([("output", output_path)],
                  [("model", input_path), ("calibration file", calib), ("evaluation file", eval_data)])
    searching = isinstance(recipe, str) and recipe in SEARCHES
    steps = recipe if isinstance(recipe, list) else None if searching else load_recipe(recipe)
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
    _check_finite(graph, input_path)
    scored = M.scored_output(graph, output)
    has = lambda field: any(getattr(ds, field) is not None for ds in (calib_ds, eval_ds) if ds)
    chosen = M.choose_metric(graph, scored, has("labels"), metric, has("targets"))
    for ds, what in ((calib_ds, f"calibration file {calib}"), (eval_ds, f"evaluation file {eval_data}")):
        if ds is not None:
            _check_data(ds, graph, scored, chosen, what)
    # one session per file serves scoring and the latency measurement
    base_sess = Session(input_path, threads=1) if (eval_ds or measure_latency) else None
    base_run = D.output_of(base_sess, scored) if base_sess else None
    base_size = file_size(input_path)
    report = Report(model=str(input_path), output=str(output_path),
                    unknown_ops=unknown_op_types(model, registry.known_ops()),
                    budget=max_accuracy_drop, scored_output=scored, metric=chosen.value,
                    units=M.UNITS[chosen])
    evaluator = None
    if eval_ds is not None:
        progress("scoring the uncompressed model")
        evaluator = Evaluator(eval_ds, D.predict(base_run, eval_ds), chosen)
        report.stages.append(evaluator.stage("original", base_size, base_size, base_run))
    else:
        report.stages.append(StageRow("original", base_size, 1.0))
    # every core for calibration (the latency figures use one thread, by design)
    calibration = Calibration(calib_ds, scored, chosen, threads=None) if calib_ds else None
    ctx = Context(calibration, progress)
    plan = None
    if searching and calibration is None:
        report.notes.append("no calibration data: the budget search needs some, so the fixed "
                            "deep-compression recipe ran (pass --calib for a searched one)")
        steps = load_recipe("deep-compression")
    elif searching:
        prune_on, cluster_on = SEARCHES[recipe]
        plan = search.plan(graph, calibration, max_accuracy_drop, prune=prune_on,
                           cluster=cluster_on, progress=progress)
        steps, ctx = plan.steps, Context(plan.fit, progress)  # fitted as the trials were
        report.notes.extend(plan.notes())
        report.search = plan.facts()
    exit_stages: list[str] = []  # stages whose graph has early exits

    def after_step(step: Step, pass_report: PassReport, stage: gs.Graph) -> None:
        report.notes.extend(f"{step.name}: {n}" for n in pass_report.notes)
        if ExitTable.from_doc(stage.doc_string) is not None:
            exit_stages.append(step.stage)
        report.passes.append(pass_summary(pass_report))
        if evaluator:
            m = gs.export_onnx(stage, do_type_check=False)
            run_m = D.output_of(Session(m.SerializeToString(), threads=1), scored)
            report.stages.append(evaluator.stage(step.stage, m.ByteSize(), base_size, run_m))
        else:  # the size alone: no copy of the weights
            size = exported_size(stage)
            report.stages.append(StageRow(step.stage, size, base_size / size))

    if plan is not None and plan.outcome:  # the search's chosen trial: written, not run again
        for step, pass_report, stage in plan.outcome:
            after_step(step, pass_report, stage)
        graph, plan.outcome = plan.outcome[-1][2], None
    else:
        try:
            run(graph, steps, ctx, lambda step, rep: after_step(step, rep, graph),
                budget=max_accuracy_drop)
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
            evaluator.stage("packed", out_size, base_size, D.output_of(out_sess, scored))
            if evaluator else StageRow("packed", out_size, base_size / out_size))
    stored = {t.name: t.stored_bytes for t in creport.tensors} if creport else None
    codecs = {t.name: t.codec for t in creport.tensors} if creport else None
    sample = (calib_ds or eval_ds).feeds if (calib_ds or eval_ds) else None
    report.layers = layer_rows(final, stored, codecs, sizes_before, arrays=arrays, feeds=sample)
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
    if plan is not None and report.accuracy_drop is None:  # no --eval: the search's measure
        report.accuracy_drop = plan.drop
        report.within_budget = plan.drop <= plan.budget + 1e-9 if report.budget is not None \
            else None
        report.notes.append(f"drop measured on {plan.held_out} held-out calibration samples "
                            "(no --eval data)")
    return report


def _check_budget(budget: float | None, eval_data: str | Path | None,
                  calib: str | Path | None) -> None:
    if budget is None:
        return
    if not math.isfinite(budget) or budget < 0:
        raise BadInputError(f"--max-accuracy-drop must be a number of points >= 0, got {budget}")
    if eval_data is None and calib is None:
        raise BadInputError("--max-accuracy-drop needs data to measure the drop on: --eval (and "
                            "--calib, whose held-out half steers the search)")


def _check_finite(graph: gs.Graph, path: Path) -> None:
    """Refuse NaN or infinite weights before any pass changes them."""
    bad = []
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and np.asarray(t.values).dtype.kind == "f":
            count = int(np.asarray(t.values).size - np.count_nonzero(np.isfinite(t.values)))
            if count:
                bad.append(f"'{t.name}' ({count:,})")
    if bad:
        raise BadInputError(f"{path}: NaN or infinite values in {len(bad)} weight tensor(s): "
                            f"{', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}; compression "
                            "needs finite weights")


def _check_data(ds: D.Dataset, graph: gs.Graph, output: str, metric: M.Metric,
                where: str) -> None:
    """Labels must name classes of the scored output; targets must have its shape."""
    try:
        shape = infer_shapes(graph).get(output)
    except (onnx.shape_inference.InferenceError, ValueError, KeyError, TypeError):
        shape = None
    if shape and metric in (M.Metric.TOP1, M.Metric.AGREEMENT):
        D.check_labels(ds, int(np.prod(shape[1:])), where)
    if ds.targets is not None and shape and ds.targets.shape[1:] != tuple(shape[1:]):
        raise BadInputError(f"{where}: 'targets' of shape {ds.targets.shape} do not match the "
                            f"output '{output}' {tuple(shape[1:])} per sample")


def _exit_report(report: Report, table: ExitTable, sess: Session, eval_ds: D.Dataset | None,
                 evaluator: Evaluator | None, stages: list[str]) -> None:
    """Exit statistics of a model with early exits: per exit on the evaluation data (else as
    planned on held-out calibration data), and the expected FLOPs of the stages that have them."""
    taken = outputs = None
    if eval_ds is not None and sess is not None:
        taken = exit_indices(sess, eval_ds, table.output)
        outputs = D.predict(D.output_of(sess), eval_ds)
    report.exit_criterion = table.criterion
    report.exits, flops = exit_rows(table, taken, outputs,
                                    evaluator.reference if evaluator else None,
                                    eval_ds.labels if eval_ds is not None else None)
    report.stages[0].flops = table.model_flops
    for row in report.stages[1:]:
        row.flops = flops if row.stage in stages else None
