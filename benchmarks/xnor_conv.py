"""XnorConv (native, 1-bit) against ONNX Runtime's float32 Conv on the same shapes.

Per layer, batch 1, with one thread and with two: the median of repeated runs of
- ORT: a one-node float Conv model (graph optimizations on, intra_op_num_threads = threads);
- whole op: ``xnor_conv`` from Python on prepared weights = sign-packing of the input + im2col
  panels + popcount GEMM + padding correction + output transform (float32(D) * alpha + bias);
- GEMM core: the popcount GEMM tiles alone on pre-built panels (``bench_gemm_core``).
One-thread times are the calling thread's CPU time, so other processes sharing the two vCPUs do
not inflate them; two-thread times are wall clock.  The machine's peaks are measured first:
clock from a dependent add chain, float32 FMA and XOR+popcount+add throughput from register-only
loops.  Efficiencies ("% peak") are against those register-only loops re-run in the same rounds
as each layer, so they do not depend on the clock, which moves under load.  With two threads
each XnorConv timing starts 100 ms after ORT's last run and each ORT timing 10 ms after
XnorConv's: ORT's idle workers keep spinning for tens of ms after a run, on the vCPU XnorConv's
worker needs (measured: 512x512x28x28 two-thread XnorConv 1.2 ms, but 4-6 ms within 30 ms of
an ORT run), and ORT needs its spinning (without it its two-thread small layers do not scale).

    python benchmarks/xnor_conv.py [--reps 5] [--nets alexnet,vgg16,resnet18] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxcompress.kernels import xnor_native as xn

BINARY_PEAK_PER_CYCLE = 512 / 1.5  # vpxord + vpopcntd + vpaddd on ports 0/5, popcnt on p5 only
FMA_PEAK_PER_CYCLE = 2 * 16 * 2  # two 512-bit FMA units x 16 float32 lanes x 2 flops


# ---- register-only peaks and the GEMM core, from the C library's measurement entry points ----


def _lib():
    lib = xn.library()
    if lib is None:
        raise SystemExit("the XnorConv native library is not built: pip install -e .")
    return lib


def measure_ghz(cycles: int = 50_000_000) -> float:
    """Core clock in GHz from a chain of dependent 1-cycle adds (thread CPU time)."""
    return float(_lib().xnor_measure_ghz(cycles))


def peak_binary(path: str, iters: int = 20_000_000) -> float:
    """Register-only XOR+popcount+add throughput of `path`, bit-MACs per ns (one thread)."""
    return float(_lib().xnor_peak_binary(xn.PATHS.index(path), iters))


def peak_fma(width_bits: int = 512, iters: int = 20_000_000) -> float:
    """Register-only float32 FMA throughput, flops per ns (one thread)."""
    return float(_lib().xnor_peak_fma(width_bits, iters))


def bench_gemm_core(m: int, kbits: int, positions: int, reps: int, threads: int) -> np.ndarray:
    """[reps, 2] seconds (wall, calling thread's CPU) of the popcount GEMM tiles alone on
    pre-built panels: no packing, no im2col, no padding correction."""
    out = np.zeros((reps, 2), dtype=np.float64)
    rc = _lib().xnor_bench_gemm_core(
        xn.PATHS.index(xn.best_path()), m, kbits, positions, reps, threads, out.ctypes.data
    )
    if rc != 0:
        raise SystemExit(f"xnor_bench_gemm_core failed with code {rc}")
    return out


@dataclass(frozen=True)
class Layer:
    net: str
    name: str
    c: int
    m: int
    hw: int
    k: int = 3
    stride: int = 1
    pad: int = 1

    @property
    def out_hw(self) -> int:
        return (self.hw + 2 * self.pad - self.k) // self.stride + 1

    @property
    def macs(self) -> int:
        return self.m * self.out_hw**2 * self.c * self.k * self.k


# AlexNet as one tower (Krizhevsky et al. 2012 widths, group=1), VGG-16's distinct 3x3 shapes,
# ResNet-18's 3x3 convs (the 7x7 stem excluded).
LAYERS = [
    Layer("alexnet", "conv2", 96, 256, 27, k=5, pad=2),
    Layer("alexnet", "conv3", 256, 384, 13),
    Layer("alexnet", "conv4", 384, 384, 13),
    Layer("alexnet", "conv5", 384, 256, 13),
    Layer("vgg16", "conv1_1", 3, 64, 224),
    Layer("vgg16", "conv1_2", 64, 64, 224),
    Layer("vgg16", "conv2_1", 64, 128, 112),
    Layer("vgg16", "conv2_2", 128, 128, 112),
    Layer("vgg16", "conv3_1", 128, 256, 56),
    Layer("vgg16", "conv3_2", 256, 256, 56),
    Layer("vgg16", "conv4_1", 256, 512, 28),
    Layer("vgg16", "conv4_2", 512, 512, 28),
    Layer("vgg16", "conv5_x", 512, 512, 14),
    Layer("resnet18", "layer1", 64, 64, 56),
    Layer("resnet18", "layer2.0a", 64, 128, 56, stride=2),
    Layer("resnet18", "layer2", 128, 128, 28),
    Layer("resnet18", "layer3.0a", 128, 256, 28, stride=2),
    Layer("resnet18", "layer3", 256, 256, 14),
    Layer("resnet18", "layer4.0a", 256, 512, 14, stride=2),
    Layer("resnet18", "layer4", 512, 512, 7),
]


def timed(fn, cpu: bool) -> float:
    """Seconds of the second of two back-to-back fn() calls (warm caches: otherwise the other
    side's working set, e.g. ORT's float weights, is what gets measured); thread CPU time or
    wall clock."""
    clock = time.thread_time if cpu else time.perf_counter
    fn()
    t0 = clock()
    fn()
    return clock() - t0


def ort_session(layer: Layer, w: np.ndarray, b: np.ndarray, threads: int) -> ort.InferenceSession:
    p = layer.pad
    node = helper.make_node(
        "Conv",
        ["X", "W", "B"],
        ["Y"],
        kernel_shape=[layer.k, layer.k],
        strides=[layer.stride] * 2,
        pads=[p, p, p, p],
    )
    graph = helper.make_graph(
        [node],
        layer.name,
        [
            helper.make_tensor_value_info(
                "X", onnx.TensorProto.FLOAT, [1, layer.c, layer.hw, layer.hw]
            )
        ],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def bench_layer(layer: Layer, threads: int, reps: int, rng: np.random.Generator) -> dict:
    """Medians over `reps` rounds; each round times ORT, the whole op, and the register-only
    peaks back to back, so a change in clock or load hits all of them alike."""
    cpu = threads == 1
    x = rng.normal(size=(1, layer.c, layer.hw, layer.hw)).astype(np.float32)
    w = rng.normal(size=(layer.m, layer.c, layer.k, layer.k)).astype(np.float32)
    b = rng.normal(size=layer.m).astype(np.float32)
    sess = ort_session(layer, w, b, threads)
    packed, alpha = xn.pack_weights(w)
    prepared = xn.prepare_weights(packed, layer.c, (layer.k, layer.k))
    attrs = {
        "kernel_shape": (layer.k, layer.k),
        "strides": (layer.stride,) * 2,
        "pads": (layer.pad,) * 4,
    }
    out = np.empty((1, layer.m, layer.out_hw, layer.out_hw), dtype=np.float32)
    run_ort = lambda: sess.run(None, {"X": x})
    run_xnor = lambda: xn.xnor_conv(x, prepared, alpha, b, threads=threads, out=out, **attrs)
    run_ort(), run_xnor()
    settle = (lambda s: None) if cpu else time.sleep
    rounds = []
    for _ in range(reps):
        settle(0.01)
        t_ort = timed(run_ort, cpu)
        settle(0.1)
        phases = xn.xnor_conv_timed(x, prepared, alpha, b, threads=threads, out=out, **attrs)[1]
        rounds.append(
            {
                "ort": t_ort,
                "whole": timed(run_xnor, cpu),
                "pack": phases["pack_cpu" if cpu else "pack"],
                "bin_peak": peak_binary(xn.best_path(), 1_000_000),  # bit-MACs per ns
                "fma_peak": peak_fma(512, 1_000_000),  # flops per ns
            }
        )
    r = {k: statistics.median(d[k] for d in rounds) for k in rounds[0]}
    r["ort_min"] = min(d["ort"] for d in rounds)
    r["whole_min"] = min(d["whole"] for d in rounds)
    kbits = xn.padded_k_bits(layer.c, (layer.k, layer.k))
    core = bench_gemm_core(layer.m, kbits, layer.out_hw**2, reps, threads)
    r["core"] = float(np.median(core[:, 1] if cpu else core[:, 0]))
    r["core_min"] = float(np.min(core[:, 1] if cpu else core[:, 0]))
    r["core_bitmacs"] = layer.m * layer.out_hw**2 * kbits
    return r


def peaks() -> dict:
    """Clock (max of a few short runs: load only lowers it) and per-cycle peaks."""
    ghz = max(measure_ghz(50_000_000) for _ in range(5))
    out = {"ghz": ghz, "fma512": peak_fma(512) / ghz, "fma256": peak_fma(256) / ghz}
    for path in xn.available_paths():
        if path != "reference":
            out["bin_" + path] = peak_binary(path) / ghz
    out["ghz_after"] = max(measure_ghz(50_000_000) for _ in range(5))
    return out


def peak_table(pk: dict) -> list[str]:
    rows = [
        "| quantity | per cycle (measured) | per cycle (theory) | at the measured clock |",
        "|---|---|---|---|",
        (
            f"| core clock (dependent-add chain, before / after) | 1 add | 1 add | "
            f"{pk['ghz']:.2f} / {pk['ghz_after']:.2f} GHz |"
        ),
        (
            f"| float32 FMA, zmm | {pk['fma512']:.1f} flops | {FMA_PEAK_PER_CYCLE} flops "
            f"(2 x 512-bit FMA) | {pk['fma512'] * pk['ghz']:.0f} GFLOP/s "
            f"= {pk['fma512'] * pk['ghz'] / 2:.0f} GMAC/s |"
        ),
        (
            f"| float32 FMA, ymm | {pk['fma256']:.1f} flops | 32 flops | "
            f"{pk['fma256'] * pk['ghz']:.0f} GFLOP/s |"
        ),
    ]
    theory = {
        "avx512": f"{BINARY_PEAK_PER_CYCLE:.0f}",
        "avx2": "96 (8 uops / 256 bits on 3 ports)",
        "portable": "64 (popcnt r64 on 1 port)",
    }
    for path in ("avx512", "avx2", "portable"):
        if "bin_" + path in pk:
            v = pk["bin_" + path]
            rows.append(
                f"| binary MAC ({path}: xor+popcount+add) | {v:.0f} bit-MACs | "
                f"{theory[path]} bit-MACs | {v * pk['ghz']:.0f} G bit-MAC/s |"
            )
    return rows


def layer_table(results: list[tuple[Layer, dict]], threads: int, stat: str = "median") -> list[str]:
    clock = "thread CPU time" if threads == 1 else "wall clock"
    sfx = "_min" if stat == "min" else ""
    rows = [
        f"### {threads} thread{'s' if threads > 1 else ''} ({clock}, {stat} of the rounds)",
        "",
        (
            "| net | layer | C→M, H, k/s | GMAC | ORT float ms | XnorConv whole ms | of which pack ms "
            "| GEMM core ms | whole speedup | core speedup | core % binary peak | ORT % FP32 peak |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layer, r0 in results:
        r = {**r0, "ort": r0["ort" + sfx], "whole": r0["whole" + sfx], "core": r0["core" + sfx]}
        # rates against the register-only peaks measured in the same rounds (one thread each;
        # for two threads the peak is taken as twice that)
        core_eff = r["core_bitmacs"] / r["core"] / 1e9 / (r["bin_peak"] * threads)
        ort_eff = 2 * layer.macs / r["ort"] / 1e9 / (r["fma_peak"] * threads)
        rows.append(
            f"| {layer.net} | {layer.name} | {layer.c}→{layer.m}, {layer.hw}, "
            f"{layer.k}/{layer.stride} | {layer.macs / 1e9:.3f} | {r['ort'] * 1e3:.2f} | "
            f"{r['whole'] * 1e3:.3f} | {r['pack'] * 1e3:.3f} | {r['core'] * 1e3:.3f} | "
            f"{r['ort'] / r['whole']:.1f}x | {r['ort'] / r['core']:.1f}x | {100 * core_eff:.0f}% | "
            f"{100 * ort_eff:.0f}% |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--nets", default="alexnet,vgg16,resnet18")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = ap.parse_args()
    nets = set(args.nets.split(","))
    layers = [layer for layer in LAYERS if layer.net in nets]
    load = os.getloadavg()[0]
    pk = peaks()
    lines = ["## Machine peaks (one thread)", "", *peak_table(pk), ""]
    for threads in (int(t) for t in args.threads.split(",")):
        rng = np.random.default_rng(0)
        results = [(layer, bench_layer(layer, threads, args.reps, rng)) for layer in layers]
        lines += [*layer_table(results, threads), ""]
        if threads > 1:  # on a shared machine the median mostly measures the other processes
            lines += [*layer_table(results, threads, "min"), ""]
    lines.append(
        f"Load average (1 min) at start / end: {load:.1f} / {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} vCPUs; CPU {platform.processor() or platform.machine()}, "
        f"onnxruntime {ort.__version__}, path {xn.best_path()}."
    )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
