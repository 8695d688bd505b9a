"""Container speed: Huffman and rANS decode throughput and load time against ONNX Runtime.

    python benchmarks/container_speed.py [--mb 256] [--repeats 5] [--workdir DIR]

1. decode throughput of the C Huffman and rANS decoders (M symbols/s, median of `repeats`) on
   the gap and value streams of a realistic pruned + clustered tensor, with the coded size
   against the empirical entropy bound;
2. a large float model (a chain of square Gemms, `--mb` MB of weights quantized to 32 levels,
   90% zeros) saved as .onnx and as a container; median load time of
   a) onnxruntime.InferenceSession(original.onnx),
   b) read_container() + InferenceSession(model bytes), and
   c) ort_session() (decoded arrays handed to ORT as external initializers),
   measured interleaved, median of `repeats` each.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.container import (
    _cnative,
    codecs,
    huffman,
    ort_session,
    rans,
    read_container,
    write_container,
)


def pruned_clustered(
    rng: np.random.Generator, shape: tuple[int, ...], levels: int = 32, density: float = 0.1
) -> np.ndarray:
    """Weights on `levels` shared values with (1 - density) of them exactly zero."""
    centers = np.linspace(-0.1, 0.1, levels).astype(np.float32)
    w = centers[rng.integers(0, levels, size=shape)]
    w[rng.random(shape) >= density] = 0.0
    return w


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def decode_throughput(rng: np.random.Generator, n: int, repeats: int) -> None:
    w = pruned_clustered(rng, (n,))
    book, idx = _cnative.codebook_index(w.view(np.uint32))
    counts = np.bincount(idx, minlength=book.size)
    gaps, vals, _ = codecs.sparse_entries(idx, book, int(np.argmax(counts)), gap_bits=8)
    print(f"streams of a {n:,}-element tensor, 10% nonzero, 32 levels, gap_bits 8:")
    for label, sym in (("gaps", gaps), ("values", vals)):
        p = huffman.plan(huffman.histogram(sym))
        payload = _cnative.huff_encode(p.lengths, sym, (p.bits + 7) // 8)
        t = median_time(
            lambda p=p, data=payload, s=sym: _cnative.huff_decode(p.lengths, data, s.size), repeats
        )
        assert np.array_equal(_cnative.huff_decode(p.lengths, payload, sym.size), sym)
        print(
            f"  {label:6s} {sym.size:>11,} symbols  decode {sym.size / t / 1e6:7.1f} M symbols/s"
            f"  {p.bits / p.n:.3f} bits/symbol vs entropy {p.entropy_bits / p.n:.3f}"
            f"  (+{100 * huffman.entropy_gap(p):.2f}%)"
        )
        rans_throughput(label, sym, repeats)
    dense = huffman.plan(counts)
    payload = _cnative.huff_encode(dense.lengths, idx, (dense.bits + 7) // 8)
    t = median_time(lambda: _cnative.huff_decode(dense.lengths, payload, idx.size), repeats)
    print(
        f"  dense  {idx.size:>11,} symbols  decode {idx.size / t / 1e6:7.1f} M symbols/s"
        f"  (codebook indices, all elements)"
    )
    rans_throughput("dense", idx, repeats)


def rans_throughput(label: str, sym: np.ndarray, repeats: int) -> None:
    """The same symbols as an rANS stream: decode speed and payload bits against entropy."""
    m = rans.plan(np.bincount(sym, minlength=256))
    payload = rans.encode_payload(sym, m)
    t = median_time(lambda: _cnative.rans_decode(m.freqs, m.precision, payload, sym.size),
                    repeats)
    assert np.array_equal(_cnative.rans_decode(m.freqs, m.precision, payload, sym.size), sym)
    bits = 8 * len(payload)
    print(f"  {label:6s} rANS (P={m.precision:2d})  decode {sym.size / t / 1e6:7.1f} M symbols/s"
          f"  {bits / sym.size:.3f} bits/symbol (+{100 * (bits / m.entropy_bits - 1):.2f}%)")


def big_model(rng: np.random.Generator, mb: int) -> onnx.ModelProto:
    """A chain of square Gemms holding about `mb` MB of float32 weights."""
    n_layers = 4
    dim = int(np.sqrt(mb * 2**20 / 4 / n_layers)) // 64 * 64
    nodes, inits, x = [], [], "x"
    for i in range(n_layers):
        w, b = f"W{i}", f"B{i}"
        inits += [
            numpy_helper.from_array(pruned_clustered(rng, (dim, dim)), w),
            numpy_helper.from_array(np.zeros(dim, np.float32), b),
        ]
        y = "y" if i == n_layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, w, b], [y], name=f"fc{i}"))
        x = y
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dim])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def load_ratio(rng: np.random.Generator, mb: int, repeats: int, work: Path) -> None:
    model = big_model(rng, mb)
    src, dst = work / "big.onnx", work / "big.onnxc"
    onnx.save(model, str(src))
    kinds = {t.name: "fc" for t in model.graph.initializer}
    t = time.perf_counter()
    report = write_container(model, dst, tensor_kinds=kinds)
    written = time.perf_counter() - t
    print(
        f"\nmodel: {src.stat().st_size / 2**20:.1f} MiB .onnx -> {report.total_bytes / 2**20:.2f}"
        f" MiB container ({src.stat().st_size / report.total_bytes:.1f}x, written in "
        f"{written:.1f} s)"
    )
    x = rng.standard_normal((1, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value))
    feed = {"x": x.astype(np.float32)}

    def opts() -> ort.SessionOptions:  # fresh each time: ort_session registers arrays on it
        so = ort.SessionOptions()
        so.log_severity_level = 3
        return so

    def original() -> ort.InferenceSession:
        return ort.InferenceSession(str(src), opts(), providers=["CPUExecutionProvider"])

    def via_proto() -> ort.InferenceSession:
        m = read_container(dst)
        return ort.InferenceSession(
            m.SerializeToString(), opts(), providers=["CPUExecutionProvider"]
        )

    def via_arrays() -> ort.InferenceSession:
        return ort_session(dst, opts())

    want = original().run(None, feed)[0]
    for fn in (via_proto, via_arrays):
        assert np.array_equal(fn().run(None, feed)[0], want), fn.__name__
    variants = {
        "ORT session from the original .onnx": original,
        "read_container -> ModelProto": lambda: read_container(dst),
        "read_container + ORT session from bytes": via_proto,
        "ort_session (arrays as external inits)": via_arrays,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved, so that load on the machine hits all alike
        for label, fn in variants.items():
            times[label].append(median_time(fn, 1))
    base = float(np.median(times["ORT session from the original .onnx"]))
    for label, ts in times.items():
        t = float(np.median(ts))
        print(f"  {label:42s} {t:6.3f} s ({t / base:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256, help="weight megabytes of the large model")
    ap.add_argument("--symbols", type=int, default=20_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    decode_throughput(rng, args.symbols, args.repeats)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="container-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        load_ratio(rng, args.mb, args.repeats, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
