"""The `onnxcompress` command line: thin commands over the library.

Each pass command (`prune`, `cluster`, `binarize`) builds a one-step recipe and runs the same code path as
`compress`, so a command line and a recipe file behave identically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

from onnxcompress import __version__
from onnxcompress.errors import AccuracyBudgetExceeded
from onnxcompress.metrics import Metric

from .boundary import ErrorBoundary

EPILOG = """\b
Exit codes: 0 success; 2 bad input (file, data, option, recipe); 3 the accuracy drop exceeds
--max-accuracy-drop (outputs and report are still written); 4 a pass failed unexpectedly
(a bug: -v shows the traceback).
"""

ONE_PASS_SEARCHES = {"prune": "auto-prune", "cluster": "auto-cluster"}
def _progress(msg: str) -> None:
    click.echo(f"  .. {msg}", err=True)


@click.group(cls=ErrorBoundary, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxcompress")
@click.option("-v", "--verbose", is_flag=True, help="Log what each pass does.")
def main(verbose: bool) -> None:
    """Make an exported ONNX model smaller and faster after training.

    \b
    The whole Deep Compression pipeline, gated on accuracy, in one line:
      onnxcompress compress model.onnx -o small.onnxc --calib calib.npz \\
          --eval eval.npz --max-accuracy-drop 1.0 --json report.json
    \b
    Or step by step:
      onnxcompress prune model.onnx -o pruned.onnx --sparsity 0.8
      onnxcompress cluster pruned.onnx -o clustered.onnx --bits 5
      onnxcompress pack clustered.onnx -o clustered.onnxc
      onnxcompress run clustered.onnxc --input x.npy
      onnxcompress unpack clustered.onnxc -o plain.onnx

    Data files (--calib, --eval, --input) are .npz files keyed by the model's input names, with
    an optional `labels` array of class ids for top-1 accuracy; .npy works for one-input models.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _default_out(model: str, suffix: str) -> Path:
    p = Path(model)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(f"{stem}.{suffix}")


def _finish(report, json_path: str | None, quiet: bool = False) -> None:
    from onnxcompress.files import write_text
    from onnxcompress.report.render import render

    if json_path:
        write_text(json_path, json.dumps(report.to_dict(), indent=2))
    if not quiet:
        click.echo(render(report))
    if report.within_budget is False and report.budget_unmet:
        raise AccuracyBudgetExceeded(f"{', '.join(report.budget_unmet)}: no setting meets the "
                                     "accuracy budget; the model was written unchanged")
    if report.within_budget is False:
        raise AccuracyBudgetExceeded(f"{report.metric} drop {report.accuracy_drop:.2f} "
                                     f"{report.units} exceeds --max-accuracy-drop {report.budget}")


_data_opts = [
    click.option("--max-accuracy-drop", type=float,
                 help="Budget: how much of the --metric the output may lose (points of top-1 "
                      "for a classifier, see --metric for the units). Exceeding it on --eval "
                      "exits with code 3."),
    click.option("--calib", type=click.Path(dir_okay=False), help="Calibration .npz (inputs, "
                 "optional labels): drives sensitivity scans and bias correction."),
    click.option("--eval", "eval_data", type=click.Path(dir_okay=False),
                 help="Evaluation .npz: accuracy (with labels) or fidelity before and after."),
    click.option("--json", "json_path", type=click.Path(dir_okay=False),
                 help="Also write the report as JSON here."),
    click.option("--no-latency", is_flag=True, help="Skip the batch-1 latency measurement."),
]


_fidelity_opts = [
    click.option("--metric", type=click.Choice([m.value for m in Metric]),
                 help="How fidelity is measured, in the budget's units: top1 (points of "
                      "accuracy, needs labels), agreement (points of top-1 agreement with the "
                      "original), cosine (100 x mean cosine to the original output), mse "
                      "(percent relative squared error), psnr (dB, needs targets). Default: "
                      "chosen from the output (class scores: top1/agreement; a pooled or "
                      "normalized vector: cosine; else mse)."),
    click.option("--output", "output_name", metavar="NAME",
                 help="The model output that carries its answer (default: the first float "
                      "output computed from the weights, the lowest-rank one)."),
]


def data_options(f):
    for opt in reversed(_data_opts + _fidelity_opts):
        f = opt(f)
    return f


def fidelity_options(f):
    for opt in reversed(_fidelity_opts):
        f = opt(f)
    return f


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False),
              help="Output: .onnxc (container, smallest) or .onnx. Default: MODEL.onnxc")
@click.option("--recipe", default="auto", show_default=True,
              help="auto: search per layer (sparsity, bits, or untouched) for the smallest "
                   "model within --max-accuracy-drop (default 0.5), measured on held-out "
                   "--calib samples (auto-prune / auto-cluster search one pass only); or a "
                   "fixed recipe: deep-compression, prune-only, cluster-only, or a .toml/.yaml "
                   "file of steps.")
@data_options
def compress(model, output, recipe, **data):
    """Make the smallest model within an accuracy budget (default: a per-layer search over
    pruning and k-means sharing, then the Huffman container).

    \b
    Example:
      onnxcompress compress models/lenet5.onnx -o lenet5.onnxc \\
          --calib models/data/calib.npz --eval models/data/eval.npz \\
          --max-accuracy-drop 1.0 --json report.json
    """

    _compress(model, output or _default_out(model, "onnxc"), recipe, data)


def _compress(model, output, recipe, data: dict) -> None:
    """The shared path of `compress` and the pass commands (data: the common options)."""
    from onnxcompress.compress import compress as run_compress

    _check_paths(model, output, data["json_path"], data["calib"], data["eval_data"])
    report = run_compress(model, output, recipe=recipe, calib=data["calib"],
                          eval_data=data["eval_data"], max_accuracy_drop=data["max_accuracy_drop"],
                          measure_latency=not data["no_latency"], metric=data["metric"],
                          output=data["output_name"], progress=_progress)
    _finish(report, data["json_path"])


def _run_one_pass(name, model, output, settings, suffix, data: dict) -> None:
    from onnxcompress.pipeline import Step
    from onnxcompress.recipe import make_config

    settings = {k: v for k, v in settings.items() if v is not None}
    output = output or _default_out(model, suffix)
    if not settings and data["max_accuracy_drop"] is not None and data["calib"] \
            and name in ONE_PASS_SEARCHES:  # the budget is the only knob: search it per layer
        _compress(model, output, ONE_PASS_SEARCHES[name], data)
        return
    step = Step(name, make_config(name, settings, where=f"onnxcompress {name}"))
    _compress(model, output, [step], data)


def _check_paths(model, output, json_path, calib=None, eval_data=None, baseline=None) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other."""
    from onnxcompress.files import check_outputs

    check_outputs([("-o", output), ("--json", json_path)],
                  [("model", model), ("--calib", calib), ("--eval", eval_data),
                   ("--baseline", baseline)])


def _parse_layers(values: tuple[str, ...]) -> dict[str, float] | None:
    out = {}
    for v in values:
        name, sep, ratio = v.rpartition("=")
        try:
            out[name] = float(ratio)
        except ValueError:
            name = ""
        if not sep or not name:
            raise click.BadParameter(f"'{v}': expected NAME=RATIO, e.g. 'fc1=0.9' or '*=0.5'",
                                     param_hint="--layer")
    return out or None


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False),
              help="Output .onnx (or .onnxc). Default: MODEL.pruned.onnx")
@click.option("--sparsity", type=click.FloatRange(0, 1, max_open=True),
              help="Fraction of weights to zero in every layer (uniform mode).")
@click.option("--mode", type=click.Choice(["auto", "uniform", "global", "sensitivity"]),
              help="uniform: --sparsity in every layer; global: one magnitude threshold over all "
                   "layers; sensitivity: per-layer ratios from a scan on --calib; auto (default): "
                   "uniform when --sparsity/--layer is given, else sensitivity with --calib, "
                   "else 50% uniform.")
@click.option("--layer", "layers", multiple=True, metavar="NAME=RATIO",
              help="Per-layer sparsity; NAME may be a pattern, '*' sets the default. Repeatable.")
@click.option("--tolerance", type=float, help="Sensitivity mode: points of top-1 a single layer "
              "may cost.")
@data_options
def prune(model, output, sparsity, mode, layers, tolerance, **data):
    """Magnitude pruning (Deep Compression): zero the smallest weights of Conv/Gemm/MatMul.

    \b
    Examples:
      onnxcompress prune model.onnx -o pruned.onnx --sparsity 0.8
      onnxcompress prune model.onnx --mode global --sparsity 0.9
      onnxcompress prune model.onnx --calib calib.npz              # sensitivity scan
      onnxcompress prune model.onnx --layer '*=0.5' --layer 'fc*=0.9'
    """
    settings = {"sparsity": sparsity, "mode": mode, "per_layer": _parse_layers(layers),
                "tolerance": tolerance}
    _run_one_pass("prune", model, output, settings, "pruned.onnx", data)


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False),
              help="Output .onnx (or .onnxc). Default: MODEL.clustered.onnx")
@click.option("--bits", type=click.FloatRange(1, 8),
              help="Bits per weight index for every layer: log2 of the codebook size (4.5: 23 "
                   "values; the Huffman-coded indices cost about that).")
@click.option("--bits-conv", type=click.FloatRange(1, 8), help="Bits for Conv layers (default 8).")
@click.option("--bits-fc", type=click.FloatRange(1, 8),
              help="Bits for Gemm/MatMul and embedding tables (default 5).")
@click.option("--form", type=click.Choice(["dense", "gather"]),
              help="dense: float weights set to centroids; gather: uint8 indices + a codebook "
                   "decoded in-graph, so the .onnx file itself shrinks.")
@data_options
def cluster(model, output, bits, bits_conv, bits_fc, form, **data):
    """k-means weight sharing (Deep Compression): a small codebook per layer.

    \b
    Examples:
      onnxcompress cluster pruned.onnx -o clustered.onnx --bits 5
      onnxcompress cluster model.onnx --bits-conv 6 --bits-fc 4 --form gather
    """
    settings = {"bits_conv": bits if bits is not None else bits_conv,
                "bits_fc": bits if bits is not None else bits_fc,
                "bits_embedding": bits if bits is not None else bits_fc, "form": form}
    _run_one_pass("cluster", model, output, settings, "clustered.onnx", data)


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False),
              help="Output .onnx (or .onnxc). Default: MODEL.binarized.onnx")
@click.option("--mode", type=click.Choice(["xnor", "bwn"]),
              help="xnor (default): binary weights and inputs (XNOR-Net); bwn: binary weights, "
                   "float inputs (Binary-Weight-Networks).")
@click.option("--target", type=click.Choice(["native", "portable"]),
              help="native (default): the XnorConv custom op with bit-packed weights (runs with "
                   "onnxcompress.runtime or onnxruntime-extensions); portable: standard ONNX "
                   "(Sign, Conv with +-1 weights, Mul, Add) for any runtime.")
@click.option("--layers", metavar="auto|all|NAME,NAME",
              help="auto (default): every Conv but the first and last layer, screened on --calib "
                   "when given; all: every Conv that can be binarized; or layer names/patterns.")
@click.option("--tolerance", type=float, help="auto with --calib: points of top-1 one layer may "
              "cost (default 1.0).")
@click.option("--input-scaling", is_flag=True, default=None,
              help="xnor: XNOR-Net's input scale K (mean |x| over channels and window).")
@data_options
def binarize(model, output, mode, target, layers, tolerance, input_scaling, **data):
    """Binarize Conv layers (XNOR-Net / BWN): 1-bit weights, per-channel scales.

    Layers of a model trained binary (inputs from Sign, weights +-alpha per channel) are
    lowered without changing its outputs; others are approximated (lossy), and --calib refits
    their scales and biases.

    \b
    Examples:
      onnxcompress binarize model.onnx -o bin.onnx --mode xnor --target native
      onnxcompress binarize model.onnx -o bin.onnx --mode bwn --layers conv2,conv3 \\
          --calib calib.npz --eval eval.npz
      onnxcompress run bin.onnx --input x.npy
      onnxcompress pack bin.onnx -o bin.onnxc        # binary weights stored at 1 bit each
    """
    settings = {"mode": mode, "target": target, "layers": layers, "tolerance": tolerance,
                "input_scaling": input_scaling}
    _run_one_pass("binarize", model, output, settings, "binarized.onnx", data)


@main.command("early-exit", epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False),
              help="Output .onnx (or .onnxc). Default: MODEL.exits.onnx")
@click.option("--exits", metavar="auto|N|NODE,NODE",
              help="auto (default): placed from the FLOPs before each cut and how sure a trial "
                   "head is there; N: at most N exits; or the nodes to branch after.")
@click.option("--criterion", type=click.Choice(["entropy", "max-prob", "margin"]),
              help="When a sample leaves: its head's max-prob (default), margin between the top "
                   "two probabilities, or entropy, against a threshold per exit.")
@data_options
def early_exit(model, output, exits, criterion, **data):
    """Early exits (BranchyNet): samples the model is sure about leave early.

    Exit heads (pooling + one linear layer, distilled from the model's own outputs) are fitted
    on --calib with the backbone frozen; thresholds are set on a held-out half so that the
    whole model stays within --max-accuracy-drop. The result is plain ONNX: same outputs, plus
    `exit_index` naming the exit each sample took.

    \b
    Examples:
      onnxcompress early-exit model.onnx -o exits.onnx --calib calib.npz --eval eval.npz
      onnxcompress early-exit model.onnx --calib calib.npz --exits 2 --criterion entropy
      onnxcompress report exits.onnx --baseline model.onnx --eval eval.npz
    """
    settings = {"exits": exits, "criterion": criterion}
    _run_one_pass("early_exit", model, output, settings, "exits.onnx", data)


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False),
              help="Container path. Default: MODEL.onnxc")
def pack(model, output):
    """Store a model in the Huffman-coded container (lossless; see docs/FORMAT.md).

    \b
    Example:
      onnxcompress pack clustered.onnx -o clustered.onnxc
    """
    from onnxcompress.files import check_outputs
    from onnxcompress.io import file_size, load_model, write_output

    out = Path(output) if output else _default_out(model, "onnxc")
    if out.suffix != ".onnxc":
        raise click.BadParameter("the container's name must end in .onnxc", param_hint="-o")
    check_outputs([("-o", out)], [("model", model)])
    m = load_model(model)
    write_output(m, out)
    before, after = file_size(model), file_size(out)
    click.echo(f"{model}: {before:,} B -> {out}: {after:,} B ({before / after:.1f}x)")


@main.command(epilog=EPILOG)
@click.argument("container", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False),
              help="Output .onnx. Default: CONTAINER.onnx")
def unpack(container, output):
    """Turn a container back into a plain ONNX file any runtime can run.

    \b
    Example:
      onnxcompress unpack small.onnxc -o small.onnx
    """
    from onnxcompress.container import is_container, read_container
    from onnxcompress.errors import BadInputError
    from onnxcompress.files import check_outputs
    from onnxcompress.io import save_model

    if not Path(container).is_file():
        raise BadInputError(f"{container}: no such file")
    if not is_container(container):
        raise BadInputError(f"{container}: not an onnxcompress container (bad magic); "
                            "plain .onnx files need no unpacking")
    out = Path(output) if output else _default_out(container, "onnx")
    check_outputs([("-o", out)], [("container", container)])
    save_model(read_container(container), out)
    click.echo(f"wrote {out}")


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help=".npy (one-input models) or .npz keyed by input name.")
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False),
              help="Save all outputs to this .npz.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for ONNX Runtime (intra-op) and for the XnorConv kernel "
                   "(default: all CPUs; at most 4 per CPU).")
def run(model, input_path, output, threads):
    """Run a .onnx or .onnxc model on ONNX Runtime and print (or save) its outputs.

    A model exported for a fixed batch size runs the samples in batches of that size (their
    count must be a multiple of it), its outputs joined.

    \b
    Example:
      onnxcompress run small.onnxc --input x.npy -o outputs.npz
    """
    from onnxcompress.data import fixed_batch, load_dataset, run_batches, session_specs
    from onnxcompress.files import atomic_output, check_outputs
    from onnxcompress.runtime import Session

    check_outputs([("-o", output)], [("model", model), ("--input", input_path)])
    sess = Session(model, threads=threads)
    specs = session_specs(sess)
    ds = load_dataset(input_path, specs, what="input")
    names = [o.name for o in sess.get_outputs()]
    # a model that fixes its batch size runs in batches of that size, as compress scores it;
    # any other takes the samples in one run, as given
    outs = run_batches(sess, ds, model) if fixed_batch(specs) else sess.run(None, ds.feeds)
    for name, arr in zip(names, outs):
        click.echo(f"{name}: {arr.dtype}{list(arr.shape)}")
        if arr.ndim == 2:
            click.echo(f"  top-1: {arr.argmax(axis=1)[:20].tolist()}"
                       f"{' ...' if len(arr) > 20 else ''}")
        with np.printoptions(precision=4, suppress=True, threshold=40, edgeitems=3):
            click.echo(f"  {arr}")
    if output:
        with atomic_output(output) as tmp, open(tmp, "wb") as f:
            np.savez(f, **dict(zip(names, outs)))
        click.echo(f"wrote {output}")


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--baseline", type=click.Path(dir_okay=False),
              help="The uncompressed model, for ratios, fidelity and latency side by side.")
@click.option("--eval", "eval_data", type=click.Path(dir_okay=False),
              help="Evaluation .npz (inputs, optional labels).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write JSON.")
@click.option("--no-latency", is_flag=True, help="Skip the batch-1 latency measurement.")
@fidelity_options
def report(model, baseline, eval_data, json_path, no_latency, metric, output_name):
    """Size, per-layer weights, accuracy and latency of a model (against a baseline).

    \b
    Example:
      onnxcompress report small.onnxc --baseline models/lenet5.onnx --eval eval.npz
    """
    from onnxcompress.report.compare import compare

    _check_paths(model, None, json_path, eval_data=eval_data, baseline=baseline)
    _finish(compare(model, baseline, eval_data, measure_latency=not no_latency, metric=metric,
                    output=output_name), json_path)


if __name__ == "__main__":
    main()
