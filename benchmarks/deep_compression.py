"""Deep Compression table for the zoo, side by side with the peers, in one run.

For every zoo model: size original / pruned / clustered / packed, ratio, and top-1 on the full
10,000-image Fashion-MNIST test set at each stage (our `compress` with its default recipe and a
1.0-point budget); beside it (a) ONNX Runtime's dynamic int8 quantization, (b) `xz -9` of the
original file, (c) `xz -9` of our clustered ONNX, (d) onnx-simplifier 0.8.1's pruning + k-means at
settings that reach our accuracy; and the container's bits per coded symbol against the
empirical entropy of those symbols.

    pip install -e '.[bench]'
    OPENBLAS_NUM_THREADS=1 python benchmarks/deep_compression.py [--models lenet5 vgg]

Calibration: the first 5,000 training images (the committed 1,000-image calib.npz lets the
least-squares refit overfit: LeNet-300 reached 30x but lost 2.1 points on the test set).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

ZOO = ["lenet300", "lenet5", "vgg", "resnet", "squeezenet"]
TARGETS = {"lenet300": 20, "lenet5": 20, "vgg": 10, "resnet": 10, "squeezenet": None}


def top1_of(path: Path, data: dict[str, np.ndarray]) -> float:
    from onnxcompress.runtime import Session

    sess = Session(path, threads=2)
    preds = np.concatenate([sess.run(None, {"input": data["input"][i:i + 500]})[0].argmax(1)
                            for i in range(0, len(data["input"]), 500)])
    return float((preds == data["labels"]).mean() * 100)


def bench_model(name: str, work: Path, test_npz: Path, test: dict, budget: float,
                calib_npz: Path, recipe: str) -> dict:
    import peers

    from onnxcompress.compress import compress
    from onnxcompress.container import read_container
    from onnxcompress.io import save_model

    src = REPO / "models" / f"{name}.onnx"
    packed = work / f"{name}.onnxc"
    t0 = time.perf_counter()
    rep = compress(src, packed, recipe=recipe, calib=calib_npz, eval_data=test_npz,
                   max_accuracy_drop=budget, measure_latency=True)
    seconds = time.perf_counter() - t0
    clustered = work / f"{name}.clustered.onnx"
    save_model(read_container(packed), clustered)
    int8 = peers.quantize_int8(src, work / f"{name}.int8.onnx")
    row = {
        "model": name, "compress_seconds": seconds,
        "stages": [s.__dict__ for s in rep.stages], "latency_ms": rep.latency_ms,
        "container": rep.container, "accuracy_drop": rep.accuracy_drop,
        "xz_original": peers.xz_size(src), "xz_clustered": peers.xz_size(clustered),
        "int8_bytes": int8.stat().st_size, "int8_top1": top1_of(int8, test),
        "notes": rep.notes,
    }
    target = rep.stages[-1].accuracy
    try:
        path, settings, acc = peers.onnxsim_at_matched_accuracy(
            src, work / f"{name}.onnxsim.onnx", lambda p: top1_of(p, test), target)
        row["onnxsim"] = {"bytes": path.stat().st_size, "settings": settings.label(), "top1": acc,
                          "xz_bytes": peers.xz_size(path)}
    except Exception as e:  # noqa: BLE001 (a peer failing is a finding, not a crash)
        row["onnxsim"] = {"error": f"{type(e).__name__}: {e}"}
    return row


def markdown(rows: list[dict]) -> str:
    out = [("| model | original | pruned | clustered | packed | ratio | top-1 orig → pruned → "
            "clustered → packed | target | int8 (top-1) | xz -9 orig | xz -9 clustered | onnxsim "
            "0.8.1 at matched acc | bits/sym vs entropy |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st = {s["stage"]: s for s in r["stages"]}
        orig, packed = st["original"]["bytes"], st["packed"]["bytes"]
        accs = " → ".join(f"{st[k]['accuracy']:.2f}" for k in
                          ("original", "pruned", "clustered", "packed") if k in st)
        kb = lambda n: f"{n / 1024:.1f} KB"
        tgt = TARGETS.get(r["model"])
        ratio = orig / packed
        verdict = "-" if tgt is None else (
            f"≥{tgt}×: {'met' if ratio >= tgt and r['accuracy_drop'] <= 1.0 else 'MISSED'}")
        sim = r["onnxsim"]
        sim_txt = (f"{kb(sim['bytes'])} ({orig / sim['bytes']:.1f}×), xz {kb(sim['xz_bytes'])} "
                   f"({orig / sim['xz_bytes']:.1f}×), top-1 {sim['top1']:.2f}"
                   if "bytes" in sim else sim.get("error", "-")[:60])
        c = r["container"]
        out.append(
            f"| {r['model']} | {kb(orig)} | {kb(st.get('pruned', st['original'])['bytes'])} | "
            f"{kb(st.get('clustered', st['original'])['bytes'])} | {kb(packed)} | "
            f"{ratio:.1f}× | {accs} | {verdict} | {kb(r['int8_bytes'])} ({r['int8_top1']:.2f}) | "
            f"{kb(r['xz_original'])} ({orig / r['xz_original']:.1f}×) | "
            f"{kb(r['xz_clustered'])} ({orig / r['xz_clustered']:.1f}×) | {sim_txt} | "
            f"{c['bits_per_symbol']:.3f} vs {c['entropy_bits_per_symbol']:.3f} "
            f"({c['over_entropy']:+.1%}) |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=ZOO, choices=ZOO)
    ap.add_argument("--budget", type=float, default=1.0, help="points of top-1")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--calib-size", type=int, default=5000,
                    help="calibration images, the first N of the training split")
    ap.add_argument("--recipe", default=str(REPO / "benchmarks" / "recipes" / "dc_6_4.toml"))
    args = ap.parse_args()
    from models.fashion_mnist import load

    images, labels = load("test")
    test = {"input": images, "labels": labels}
    train_x, train_y = load("train")
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxcompress-dc-") as tmp:
        work = Path(tmp)
        test_npz = work / "test.npz"
        np.savez(test_npz, **test)
        calib_npz = work / "calib.npz"
        np.savez(calib_npz, input=train_x[:args.calib_size], labels=train_y[:args.calib_size])
        for name in args.models:
            print(f"== {name}", flush=True)
            rows.append(bench_model(name, work, test_npz, test, args.budget, calib_npz,
                                    args.recipe))
            print(markdown(rows[-1:]), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)  # written after each model: runs are long
            (args.out / "deep_compression.json").write_text(json.dumps(rows, indent=2, default=str))
            (args.out / "deep_compression.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
