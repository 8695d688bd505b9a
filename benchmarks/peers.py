"""Peer baselines that the benchmark runs side by side with onnxcompress.

Four reference points, each a small function over model files:

- ``quantize_int8``: ONNX Runtime's dynamic quantization (int8 weights, ~4x smaller files).
- ``xz_size``: what a general-purpose compressor gets out of the same file (``xz -9``).
- ``onnxsim_compress``: onnx-simplifier 0.8.1's own Deep Compression steps, magnitude pruning
  (Han et al. 2015, "Learning both Weights and Connections") then per-layer k-means weight
  sharing (Han et al. 2016, "Deep Compression", arXiv:1510.00149), through its public Python API.
  ``onnxsim_at_matched_accuracy`` picks the smallest of its settings that still reaches a given
  top-1, so sizes are compared at equal accuracy.
- ``ort_load_ms``: median ONNX Runtime session-creation time, for load-time ratios.

What onnxsim 0.8.1 offers here (read from the installed wheel, not guessed):

- Pruning: ``onnxsim.apply_magnitude_pruning(model, sparsity, n=None, m=None,
  global_sparsity=False) -> ModelProto`` (an alias of ``prune_magnitude_cpp``). It zeros the
  smallest ``|w|`` of every constant MatMul/Gemm (2-D) and Conv (4-D) weight, per output row by
  default or with one model-wide threshold when ``global_sparsity=True``. ``weight_sparsity(model)``
  measures the result. The ``onnxsim`` command line has no pruning flag.
- K-means: ``onnxsim.quantize_weight_only_kmeans(model, bits=4) -> ModelProto``. Only ``bits=4``
  is accepted (anything else raises ``ValueError``: the C++ port hardcodes 16 centroids,
  20 iterations, seed 0), and only MatMul/Gemm weights are clustered; Conv weights are left as
  they are. The command line has no k-means flag either.
- Output form: both steps write a *new dense float32 initializer* for each weight they touch and
  leave the old one in the graph, so the raw file grows (about 2x after pruning, 3x after both)
  until ``onnxsim.simplify`` drops the dead initializers. The k-means docstring still describes a
  ``Gather(codebook, Cast(codes))`` form, but the shipped C++ port folds the codebook back into
  float32 values; pruned zeros survive it. So onnxsim's files are never smaller than the
  original: pruning zeros and a 16-value codebook only pay off under a general compressor,
  which is why the matched-accuracy search ranks candidates by ``xz_size`` by default.
"""

from __future__ import annotations

import contextlib
import logging
import lzma
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import onnx

log = logging.getLogger(__name__)

# --- ONNX Runtime dynamic int8 ------------------------------------------------------------


def quantize_int8(src: Path, dst: Path, *, preprocess: bool = True) -> Path:
    """Dynamic int8 quantization of `src` into `dst` with ``onnxruntime.quantization``.

    Runs ``quant_pre_process`` (shape inference + ORT graph optimization) first, as ORT
    recommends; when it fails on a model, quantizes the original file instead and logs why.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    src, dst = src.resolve(), dst.resolve()
    # ONNX Runtime's shape inference writes its temporary model and external-data files into
    # the working directory: run it inside the temporary folder so they go with it
    with tempfile.TemporaryDirectory(prefix="peers-int8-") as tmp, _working_dir(tmp):
        model_in = _ort_preprocessed(src, Path(tmp) / "pre.onnx") if preprocess else src
        quantize_dynamic(model_in, dst, weight_type=QuantType.QInt8)
    return dst


@contextlib.contextmanager
def _working_dir(path: str):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _ort_preprocessed(src: Path, out: Path) -> Path:
    """`src` after ``quant_pre_process`` written to `out`, or `src` itself if that step fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(out))
    except Exception as exc:  # noqa: BLE001 - the pre-pass is optional: any failure means "as is"
        log.warning(
            "quant_pre_process failed on %s (%s: %s); quantizing without it",
            src,
            type(exc).__name__,
            exc,
        )
        return src
    return out


# --- xz -----------------------------------------------------------------------------------


def xz_tool(*, extreme: bool = False) -> str:
    """Which compressor ``xz_size`` uses here: the ``xz`` binary if present, else Python's lzma."""
    if shutil.which("xz"):
        return "xz -9e (binary)" if extreme else "xz -9 (binary)"
    return "python lzma preset 9|EXTREME" if extreme else "python lzma preset 9"


def xz_size(path: Path, *, extreme: bool = False) -> int:
    """Bytes of `path` compressed by ``xz -9`` (``-9e`` if `extreme`), single-threaded.

    Without the binary, Python's lzma at the same preset gives byte-identical output, so the
    number does not depend on the machine. The presets themselves differ: ``9|EXTREME`` was
    17% smaller than ``-9`` on a pruned and clustered MLP, so say which one a table uses.
    """
    exe = shutil.which("xz")
    if exe is None:
        preset = 9 | lzma.PRESET_EXTREME if extreme else 9
        return len(lzma.compress(Path(path).read_bytes(), preset=preset))
    level = "-9e" if extreme else "-9"
    run = subprocess.run([exe, level, "-T1", "-c", str(path)], capture_output=True, check=True)
    return len(run.stdout)


# --- onnx-simplifier: prune -> k-means ------------------------------------------------------

ONNXSIM_KMEANS_BITS = (4,)  # what quantize_weight_only_kmeans accepts in onnxsim 0.8.1


@dataclass(frozen=True)
class OnnxsimSettings:
    """One onnxsim configuration: magnitude-prune to `sparsity`, then k-means to `bits`.

    ``bits=None`` skips k-means (weights stay unclustered float32).
    """

    sparsity: float
    bits: int | None
    global_sparsity: bool = True

    def label(self) -> str:
        scope = "global" if self.global_sparsity else "per-row"
        kmeans = f"k-means {self.bits}b" if self.bits else "no k-means"
        return f"prune {self.sparsity:.0%} ({scope}) + {kmeans}"


def onnxsim_compress(
    src: Path, dst: Path, *, sparsity: float, bits: int | None, global_sparsity: bool = True
) -> Path:
    """onnxsim's Deep Compression steps on `src`, saved to `dst` (a plain, dense ONNX file).

    simplify (folds BatchNorm and constants, so weights are initializers) → prune to `sparsity`
    → k-means with ``2**bits`` centroids (MatMul/Gemm only; ``bits=None`` skips it) → simplify
    again to drop the superseded initializers both steps leave behind.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"Expected sparsity in [0, 1), got {sparsity}")
    if bits is not None and bits not in ONNXSIM_KMEANS_BITS:
        raise ValueError(
            f"onnxsim 0.8.1 k-means supports bits in {ONNXSIM_KMEANS_BITS} "
            f"(or None to skip it), got {bits}"
        )
    onnxsim = _onnxsim()
    model = _onnxsim_simplify(onnx.load(str(src)), src)
    if sparsity > 0.0:
        model = onnxsim.apply_magnitude_pruning(
            model, sparsity=sparsity, global_sparsity=global_sparsity
        )
    if bits is not None:
        model = onnxsim.quantize_weight_only_kmeans(model, bits=bits)
    model = _onnxsim_simplify(model, src)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def _onnxsim_simplify(model: onnx.ModelProto, src: Path) -> onnx.ModelProto:
    """``onnxsim.simplify`` without its random-input check or its Z3 proof attempt."""
    simplified, ok = _onnxsim().simplify(model, certify=False)
    if not ok:
        raise RuntimeError(f"onnxsim.simplify reported a failed check on {src}")
    return simplified


def _onnxsim():
    """The ``onnxsim`` module, or an ImportError that names the extra that installs it."""
    try:
        import onnxsim
    except ImportError as exc:
        raise ImportError(
            "The onnxsim peer needs onnx-simplifier 0.8.1: pip install 'onnxcompress[bench]' "
            "(or pip install onnxsim==0.8.1)"
        ) from exc
    return onnxsim


# --- onnxsim at matched accuracy ------------------------------------------------------------

# Fine steps where post-training magnitude pruning starts to cost accuracy, coarse below.
DEFAULT_SPARSITIES = (
    0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5,
    0.4, 0.3, 0.2, 0.1, 0.0,
)  # fmt: skip
DEFAULT_BITS: tuple[int | None, ...] = (4, None)


class Trial(NamedTuple):
    """One evaluated onnxsim setting."""

    settings: OnnxsimSettings
    accuracy: float
    size: int


class Matched(NamedTuple):
    """The smallest onnxsim output that reached the target (unpacks as ``path, settings, acc``)."""

    path: Path
    settings: OnnxsimSettings
    accuracy: float


def onnxsim_at_matched_accuracy(
    src: Path,
    dst: Path,
    evaluate: Callable[[Path], float],
    target_acc: float,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    bits: Sequence[int | None] = DEFAULT_BITS,
    global_sparsity: bool = True,
    size_of: Callable[[Path], int] = xz_size,
    trials: list[Trial] | None = None,
) -> Matched:
    """Smallest onnxsim output (by `size_of`, default ``xz_size``) whose `evaluate` >= `target_acc`.

    For each k-means width, walks `sparsities` from most to least aggressive and stops at the
    first setting that reaches `target_acc`, or as soon as a file is no smaller than the best
    one found so far (less sparsity only grows the file). The winner is copied to `dst`. If
    nothing reaches the target, the most accurate candidate is returned with a warning: compare
    its accuracy with the target before calling it "matched". Each evaluated setting is appended
    to `trials` when a list is given.
    """
    if not sparsities or not bits:
        raise ValueError(
            f"Expected at least one sparsity and one bit width, got {sparsities}, {bits}"
        )
    trials = [] if trials is None else trials
    order = sorted(set(sparsities), reverse=True)
    with tempfile.TemporaryDirectory(prefix="peers-onnxsim-") as tmp:
        tried: list[tuple[Trial, Path]] = []
        best: tuple[Trial, Path] | None = None
        for b in bits:
            for s in order:
                path = Path(tmp) / f"s{s:g}_b{b}.onnx"
                onnxsim_compress(src, path, sparsity=s, bits=b, global_sparsity=global_sparsity)
                size = int(size_of(path))
                if best is not None and size >= best[0].size:
                    break
                trial = Trial(OnnxsimSettings(s, b, global_sparsity), float(evaluate(path)), size)
                log.info(
                    "onnxsim %s: top-1 %.2f, size %d", trial.settings.label(), trial.accuracy, size
                )
                trials.append(trial)
                tried.append((trial, path))
                if trial.accuracy >= target_acc:
                    best = (trial, path)
                    break
        if best is None:
            best = max(tried, key=lambda tp: tp[0].accuracy)
            log.warning(
                "no onnxsim setting reached top-1 %.2f; the best was %s at %.2f",
                target_acc,
                best[0].settings.label(),
                best[0].accuracy,
            )
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best[1], dst)
    return Matched(dst, best[0].settings, best[0].accuracy)


# --- load time ------------------------------------------------------------------------------


def ort_load_ms(path: Path, *, repeats: int = 7, threads: int = 1) -> float:
    """Median wall time, in ms, of creating an ``onnxruntime.InferenceSession`` for `path`.

    One untimed creation warms the file cache and ORT's kernel registry first.
    """
    import onnxruntime as ort

    def create() -> float:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        t0 = time.perf_counter()
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return time.perf_counter() - t0

    create()
    return statistics.median(create() for _ in range(repeats)) * 1000
