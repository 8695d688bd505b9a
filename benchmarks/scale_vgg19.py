"""Scale benchmark: the real VGG-19 topology (143.7 M parameters, seeded synthetic weights)
compressed end to end.

Measures, in one run: wall time and peak resident memory of `onnxcompress compress` (in a child
process, so its peak is its own), container size and ratio, container load time (decode until the
ONNX Runtime session is ready) against ONNX Runtime loading the original file (median of several
runs, as a ratio), and Huffman decode throughput in symbols per second.

    python benchmarks/scale_vgg19.py [--work DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = """
[[steps]]
pass = "prune"
mode = "uniform"
sparsity = 0.9

[[steps]]
pass = "cluster"
bits_conv = 8
bits_fc = 5
"""


def materialize(work: Path) -> Path:
    out = work / "vgg19.onnx"
    if not out.exists():
        subprocess.run([sys.executable, str(REPO / "models" / "materialize.py"), "--out",
                        str(work), "vgg19"], check=True)
    found = sorted(work.glob("*vgg19*.onnx"))
    if not found:
        raise SystemExit(f"materialize.py wrote no vgg19 model into {work}")
    return found[0]


def timed_compress(model: Path, out: Path, recipe: Path, report: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of the compress command in a fresh child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "onnxcompress", "compress", str(model), "-o", str(out),
                    "--recipe", str(recipe), "--no-latency", "--json", str(report)],
                   check=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("warning: peak RSS of the child not above earlier children; figure is a bound")
    return wall, peak * 1024


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="where the 575 MB model is written")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "scale_vgg19.json")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="onnxcompress-scale-"))
    work.mkdir(parents=True, exist_ok=True)

    import onnxruntime as ort

    from onnxcompress.container import load_for_ort
    from onnxcompress.runtime import Session

    model = materialize(work)
    recipe = work / "recipe.toml"
    recipe.write_text(RECIPE)
    packed = work / "vgg19.onnxc"
    report_path = work / "report.json"
    wall, peak = timed_compress(model, packed, recipe, report_path)
    coded = json.loads(report_path.read_text())["container"]
    size, packed_size = model.stat().st_size, packed.stat().st_size

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    ort_load = median_seconds(lambda: ort.InferenceSession(str(model), so, providers=[
        "CPUExecutionProvider"]), args.runs)
    our_load = median_seconds(lambda: Session(packed, threads=1), args.runs)
    decode = median_seconds(lambda: load_for_ort(packed), args.runs)

    result = {
        "model": "VGG-19 (onnx wheel light_vgg19 topology, seeded synthetic weights)",
        "file_bytes": size, "container_bytes": packed_size, "ratio": size / packed_size,
        "compress_wall_s": wall, "compress_peak_rss_bytes": peak,
        "peak_rss_over_model_size": peak / size,
        "ort_load_s": ort_load, "container_session_s": our_load,
        "load_ratio": our_load / ort_load, "decode_s": decode,
        "coded_symbols": coded["n_symbols"],
        "decode_msymbols_per_s": coded["n_symbols"] / decode / 1e6,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    for k, v in result.items():
        print(f"{k:28s} {v:.3f}" if isinstance(v, float) else f"{k:28s} {v}")


if __name__ == "__main__":
    main()
