"""The end-to-end job behind `onnxcompress compress`: load → normalize → passes → write → report."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import data as D
from .container import is_container, read_container, write_container
from .errors import UnsupportedModelError
from .graph import WEIGHT_INPUTS, exported_size, iter_weights, to_graph, to_light_model
from .model import (
    input_specs,
    load_model,
    normalize_file,
    refuse_overwrite,
    save_model,
    with_arrays,
)
from .passes.base import Context
from .pipeline import Step, run
from .recipe import load_recipe
from .report import bench
from .report.stats import (
    Report,
    StageRow,
    coding_summary,
    layer_rows,
    original_weights,
    unknown_op_types,
    weight_index,
    weight_sources,
)
from .runtime import Session
from .wire import external_locations

log = logging.getLogger(__name__)

STAGE_NAMES = {"prune": "pruned", "cluster": "clustered"}


def file_size(path: str | Path) -> int:
    """Bytes of a model file plus its external data files, if any."""
    path = Path(path)
    size = path.stat().st_size
    if not is_container(path):  # the locations are read without parsing the (maybe GB) model
        size += sum((path.parent / loc).stat().st_size for loc in external_locations(path))
    return size


def first_output(sess: Session) -> Callable:
    """feeds -> the session's first output."""
    return lambda feeds: sess.run(None, feeds)[0]


def model_runner(model: onnx.ModelProto | str | Path, threads: int = 1) -> Callable:
    """feeds -> first output, on ONNX Runtime (containers and paths via runtime.Session)."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return first_output(Session(source, threads=threads))


def tensor_kinds(model: onnx.ModelProto) -> dict[str, str]:
    """Stored initializer name -> 'conv' | 'fc', for the container's sparse gap width."""
    kinds = {}
    for node in to_graph(model).nodes:
        index = weight_index(node)
        for c in (weight_sources(node, index) or []) if index is not None else []:
            kinds[c.name] = WEIGHT_INPUTS[node.op][1]
    return kinds


def load_any(path: str | Path) -> onnx.ModelProto:
    """A plain ONNX model from a .onnx file or a container."""
    return read_container(path) if Path(path).is_file() and is_container(path) else load_model(path)


def write_output(model: onnx.ModelProto, path: Path, inputs: tuple = (),
                 arrays: dict[str, np.ndarray] | None = None):
    """Write ONNX or, for a .onnxc path, a container; return the container report (or None).

    `arrays` holds the data of the model's IN_MEMORY initializers (graph.to_light_model)."""
    refuse_overwrite(path, inputs)
    if path.suffix == ".onnxc":
        return write_container(model, path, tensor_kinds=tensor_kinds(model), arrays=arrays)
    save_model(with_arrays(model, arrays) if arrays else model, path, inputs=inputs)
    return None


@dataclasses.dataclass
class Evaluator:
    """Scores models on the eval set against the uncompressed model's outputs."""

    data: D.Dataset
    reference: np.ndarray

    def stage(self, name: str, size: int, base_size: int, run: Callable) -> StageRow:
        fid = D.fidelity(D.predict(run, self.data), self.reference, self.data.labels)
        return StageRow(name, size, base_size / max(size, 1), fid.accuracy, fid.agreement,
                        fid.max_abs_diff, fid.mean_abs_diff)


def compress(input_path: str | Path, output_path: str | Path, *,
             recipe: str | Path | list[Step] = "deep-compression",
             calib: str | Path | None = None, eval_data: str | Path | None = None,
             max_accuracy_drop: float | None = None, measure_latency: bool = True,
             progress: Callable[[str], None] = lambda m: None) -> Report:
    """Compress `input_path` into `output_path` (.onnx or .onnxc) and return the report."""
    input_path, output_path = Path(input_path), Path(output_path)
    refuse_overwrite(output_path, (input_path,))
    steps = recipe if isinstance(recipe, list) else load_recipe(recipe)
    progress(f"loading {input_path}")
    # the weights come as numpy arrays beside a proto without them: one copy of the model
    model, arrays = normalize_file(input_path)
    specs = input_specs(model)
    sizes_before = original_weights(model)
    calib_ds = D.load_dataset(calib, specs, what="calibration") if calib else None
    eval_ds = D.load_dataset(eval_data, specs, what="evaluation") if eval_data else None
    graph = to_graph(model, arrays)
    del arrays  # the graph holds them now
    if not iter_weights(graph):
        raise UnsupportedModelError(f"{input_path}: no prunable layer (Conv, Gemm or MatMul with a "
                                    "constant weight); nothing to compress")
    # one session per file serves scoring and the latency measurement
    base_sess = Session(input_path, threads=1) if (calib_ds or eval_ds or measure_latency) else None
    base_run = first_output(base_sess) if base_sess else None
    base_size = file_size(input_path)
    report = Report(model=str(input_path), output=str(output_path),
                    unknown_ops=unknown_op_types(model), budget=max_accuracy_drop)
    evaluator = None
    if eval_ds is not None:
        progress("scoring the uncompressed model")
        evaluator = Evaluator(eval_ds, D.predict(base_run, eval_ds))
        report.stages.append(evaluator.stage("original", base_size, base_size, base_run))
    else:
        report.stages.append(StageRow("original", base_size, 1.0))
    ctx = _context(calib_ds, base_run, progress)
    steps = [_with_budget(s, max_accuracy_drop) for s in steps]

    def after_step(step: Step, pass_report) -> None:
        report.notes.extend(f"{step.name}: {n}" for n in pass_report.notes)
        name = STAGE_NAMES.get(step.name, step.name)
        if evaluator:
            m = gs.export_onnx(graph, do_type_check=False)
            report.stages.append(evaluator.stage(name, m.ByteSize(), base_size, model_runner(m)))
        else:  # the size alone: no copy of the weights
            size = exported_size(graph)
            report.stages.append(StageRow(name, size, base_size / size))

    run(graph, steps, ctx, after_step)
    progress(f"writing {output_path}")
    # the weights stay the graph's arrays (no proto copy of them) until they are written
    final, arrays = to_light_model(graph, like=model)
    graph = model = None
    creport = write_output(final, output_path, (input_path,), arrays)
    out_size = file_size(output_path)
    out_sess = Session(output_path, threads=1) if (evaluator or measure_latency) else None
    if creport is not None:
        report.container = coding_summary(creport)
        report.stages.append(
            evaluator.stage("packed", out_size, base_size, first_output(out_sess))
            if evaluator else StageRow("packed", out_size, base_size / out_size))
    stored = {t.name: t.stored_bytes for t in creport.tensors} if creport else None
    codecs = {t.name: t.codec for t in creport.tensors} if creport else None
    report.layers = layer_rows(final, stored, codecs, sizes_before, arrays=arrays)
    if measure_latency:
        feeds = (calib_ds or eval_ds).feeds if (calib_ds or eval_ds) else zero_feeds(specs)
        progress("timing batch-1 latency")
        report.latency_ms["original"] = bench.latency_ms(base_sess, feeds)
        report.latency_ms[report.stages[-1].stage] = bench.latency_ms(out_sess, feeds)
    _gate(report)
    return report


def _context(calib_ds: D.Dataset | None, base_run: Callable, progress) -> Context:
    if calib_ds is None:
        return Context(progress=progress)
    reference = D.predict(base_run, calib_ds)
    labels = calib_ds.labels

    def score(graph: gs.Graph) -> float:
        out = D.predict(model_runner(gs.export_onnx(graph, do_type_check=False)), calib_ds)
        target = labels if labels is not None else D.top1(reference)
        return float((D.top1(out) == target).mean())

    return Context(calib=calib_ds.feeds, labels=labels, score=score, progress=progress)


def _with_budget(step: Step, budget: float | None) -> Step:
    """Hand the accuracy budget to passes that can plan against it (prune's max_drop)."""
    cfg = step.config
    if budget is not None and hasattr(cfg, "max_drop") and cfg.max_drop is None:
        return Step(step.name, dataclasses.replace(cfg, max_drop=budget))
    return step


def _gate(report: Report) -> None:
    first, last = report.stages[0], report.stages[-1]
    if first.accuracy is not None or first.agreement is not None:
        before = first.accuracy if first.accuracy is not None else 100.0
        after = last.accuracy if last.accuracy is not None else last.agreement
        report.accuracy_drop = before - after
        if report.budget is not None:
            report.within_budget = report.accuracy_drop <= report.budget + 1e-9


def zero_feeds(specs) -> dict[str, np.ndarray]:
    return {n: np.zeros([1] + [d or 1 for d in shape[1:]], dtype) for n, shape, dtype in specs}
