"""Early exits (issue 10) on the Fashion-MNIST zoo: speed and accuracy against the original, in
one run, one thread.

For each model (ResNet, VGG-style, LeNet-5): `onnxcompress early-exit` with 5,000 calibration
images from the training split (timed: insert + calibrate), then on the full 10,000-image test
set, side by side with the original in ONNX Runtime (one intra-op thread):
- top-1 and agreement with the original; exit rates and per-exit accuracy;
- expected FLOPs per sample, predicted on held-out calibration data against measured here;
- mean batch-1 latency (every test image run alone, the model order alternating per round; the
  median of the rounds' means) and batch-64 throughput (median of rounds);
- the same after prune -> cluster -> early exit -> pack (`--compressed`; a container).
`--heads` instead compares what the heads learn from (logits, soft targets, soft + labels) and
the exit criteria, by FLOPs and accuracy only (no timing).

    OPENBLAS_NUM_THREADS=1 python benchmarks/early_exit.py [--models resnet vgg lenet5]
        [--rounds 5] [--compressed] [--heads] [--limit N] [--out benchmarks/results/early_exit.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu import cpu_name

MODELS = ["resnet", "vgg", "lenet5"]
TARGETS = {"resnet": 2.5, "vgg": 1.8, "lenet5": 1.5}  # batch-1 speed-up at <= 0.5 points
BUDGET = 0.5
CALIB = 5000
DEFAULT_OUT = REPO / "benchmarks" / "results" / "early_exit.md"


def machine() -> dict:
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "uptime": load}


def session(path: Path):
    from onnxcompress.runtime import Session

    return Session(path, threads=1)


def predict(sess, x: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray | None]:
    outs = [sess.run(None, {"input": x[i:i + batch]}) for i in range(0, len(x), batch)]
    scores = np.concatenate([o[0] for o in outs])
    taken = np.concatenate([o[1] for o in outs]) if len(outs[0]) > 1 else None
    return scores, taken


def timings(a, b, x: np.ndarray, rounds: int) -> dict:
    """Mean batch-1 latency (ms) and batch-64 throughput (samples/s) of sessions a and b: each
    round runs every sample alone on one model, then on the other (the order alternating
    between rounds, so that neither always runs on a warmer or quieter machine), then the
    batch-64 pass; medians over the rounds."""
    ones = [{"input": x[i:i + 1]} for i in range(len(x))]
    chunks = [{"input": x[i:i + 64]} for i in range(0, len(x) - 63, 64)]
    clock = time.perf_counter
    lat: dict[str, list[float]] = {"a": [], "b": []}
    thr: dict[str, list[float]] = {"a": [], "b": []}
    for s in (a, b):
        for one in ones[:200]:
            s.run(None, one)
    for r in range(rounds):
        for key, s in ((("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))):
            t0 = clock()
            for one in ones:
                s.run(None, one)
            lat[key].append((clock() - t0) / len(ones) * 1000)
            t0 = clock()
            for chunk in chunks:
                s.run(None, chunk)
            thr[key].append(64 * len(chunks) / (clock() - t0))
    return {"latency_ms": {"original": float(np.median(lat["a"])),
                           "exits": float(np.median(lat["b"]))},
            "throughput": {"original": float(np.median(thr["a"])),
                           "exits": float(np.median(thr["b"]))},
            "rounds": rounds, "all": {"latency_ms": lat, "throughput": thr}}


def insert(src: Path, out: Path, calib: Path, recipe=None, **settings) -> tuple[object, float]:
    from onnxcompress.compress import compress
    from onnxcompress.pipeline import Step
    from onnxcompress.recipe import make_config

    steps = recipe or [Step("early_exit", make_config("early_exit", settings))]
    t0 = time.perf_counter()
    rep = compress(src, out, recipe=steps, calib=calib, max_accuracy_drop=BUDGET,
                   measure_latency=False)
    return rep, time.perf_counter() - t0


def evaluate(name: str, src: Path, out: Path, test: tuple, report, seconds: float,
             rounds: int) -> dict:
    from onnxcompress.exits import ExitTable
    from onnxcompress.io import load_any

    x, y = test
    base, exits = session(src), session(out)
    ref, _ = predict(base, x)
    got, taken = predict(exits, x)
    table = ExitTable.from_doc(load_any(out).graph.doc_string)
    costs = np.asarray(table.path_flops())
    planned = sum(e.share * e.flops for e in table.exits) + table.final_flops * (
        1 - sum(e.share for e in table.exits))
    per_exit = []
    for k in range(len(costs)):
        leave = taken == k
        per_exit.append({
            "exit": "end" if k == len(table.exits) else str(k),
            "node": table.exits[k].node if k < len(table.exits) else "",
            "cost_fraction": table.exits[k].cost_fraction if k < len(table.exits) else 1.0,
            "threshold": table.exits[k].threshold if k < len(table.exits) else None,
            "held_share": table.exits[k].share if k < len(table.exits) else None,
            "share": float(leave.mean()),
            "accuracy": float((got[leave].argmax(1) == y[leave]).mean() * 100) if leave.any()
            else None})
    row = {
        "model": name, "insert_seconds": seconds, "criterion": table.criterion,
        "top1_original": float((ref.argmax(1) == y).mean() * 100),
        "top1_exits": float((got.argmax(1) == y).mean() * 100),
        "agreement": float((got.argmax(1) == ref.argmax(1)).mean() * 100),
        "flops_original": table.model_flops, "flops_planned": float(planned),
        "flops_measured": float(costs[taken].mean()), "exits": per_exit,
        "notes": report.notes, "file_bytes": {"original": src.stat().st_size,
                                              "exits": out.stat().st_size},
    }
    row["drop"] = row["top1_original"] - row["top1_exits"]
    if rounds:
        row.update(timings(base, exits, x, rounds))
    return row


def compressed_recipe():
    from onnxcompress.recipe import steps_from_dicts

    # one budget for the run: prune spends what it measures, early exit gets the rest
    return steps_from_dicts([{"pass": "prune"},
                             {"pass": "cluster", "bits_conv": 6, "bits_fc": 4},
                             {"pass": "early_exit"}],
                            where="benchmark recipe")


def heads_table(name: str, work: Path, calib: Path, test: tuple) -> list[dict]:
    """What the heads learn from and when a sample leaves: FLOPs and accuracy, no timing."""
    rows = []
    src = REPO / "models" / f"{name}.onnx"
    for target in ("logits", "soft", "mixed"):
        for criterion in ("max-prob", "entropy", "margin"):
            if target != "soft" and criterion != "max-prob":
                continue
            out = work / f"{name}.{target}.{criterion}.onnx"
            rep, seconds = insert(src, out, calib, target=target, criterion=criterion)
            if not rep.passes[-1]["modified"]:
                rows.append({"model": name, "target": target, "criterion": criterion,
                             "exits": 0})
                continue
            r = evaluate(name, src, out, test, rep, seconds, rounds=0)
            rows.append({"model": name, "target": target, "criterion": criterion,
                         "exits": len(r["exits"]) - 1, "seconds": seconds,
                         "flops_planned": r["flops_planned"], "flops_measured": r["flops_measured"],
                         "flops_original": r["flops_original"], "drop": r["drop"],
                         "agreement": r["agreement"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------------------- markdown


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def main_table(rows: list[dict], title: str, targets: bool = True) -> list[str]:
    out = [f"### {title}", "",
           ("| model | top-1 original → exits (drop) | agreement | FLOPs/sample original → "
           "measured (planned) | batch-1 mean ms original → exits | batch-64 samples/s "
           "original → exits | insert + calibrate | target (batch 1, ≤ 0.5 pt) |"),
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat, thr = r.get("latency_ms", {}), r.get("throughput", {})
        speed = lat["original"] / lat["exits"] if lat else None
        target = TARGETS.get(r["model"]) if targets else None
        verdict = ("-" if speed is None or target is None else
                   f"≥ {target}x: {'met' if speed >= target and r['drop'] <= BUDGET else 'missed'}")
        out.append(
            f"| {r['model']} | {r['top1_original']:.2f} → {r['top1_exits']:.2f} "
            f"({r['drop']:+.2f}) | {r['agreement']:.2f} % | {r['flops_original'] / 1e6:.2f} M → "
            f"{r['flops_measured'] / 1e6:.2f} M ({_x(r['flops_original'], r['flops_measured'])}; "
            f"planned {_x(r['flops_original'], r['flops_planned'])}) | "
            + (f"{lat['original']:.4f} → {lat['exits']:.4f} (**{speed:.2f}x**) | "
               f"{thr['original']:.0f} → {thr['exits']:.0f} "
               f"(**{_x(thr['exits'], thr['original'])}**)" if lat else "- | -")
            + f" | {r['insert_seconds']:.1f} s | {verdict} |")
    out.append("")
    for r in rows:
        out += [(f"{r['model']}: exits ({r['criterion']}), test-set rates against the rates "
                "planned on held-out calibration data"), "",
                "| exit | after | FLOPs before | threshold | planned | measured | their top-1 |",
                "|---|---|---|---|---|---|---|"]
        for e in r["exits"]:
            out.append(
                f"| {e['exit']} | {e['node'] or '(original output)'} | "
                f"{100 * e['cost_fraction']:.1f} % | "
                + ("-" if e["threshold"] is None else f"{e['threshold']:.4g}")
                + " | " + ("-" if e["held_share"] is None else f"{100 * e['held_share']:.1f} %")
                + f" | {100 * e['share']:.1f} % | "
                + ("-" if e["accuracy"] is None else f"{e['accuracy']:.2f}") + " |")
        out.append("")
    return out


def heads_markdown(rows: list[dict]) -> list[str]:
    out = ["### Heads and criteria (FLOPs and accuracy on the test set; no timing)", "",
           ("| model | heads learn from | criterion | exits | FLOPs saved measured (planned) | "
           "top-1 drop | agreement | insert s |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["exits"]:
            out.append(f"| {r['model']} | {r['target']} | {r['criterion']} | 0 | - | - | - | - |")
            continue
        out.append(f"| {r['model']} | {r['target']} | {r['criterion']} | {r['exits']} | "
                   f"{_x(r['flops_original'], r['flops_measured'])} "
                   f"({_x(r['flops_original'], r['flops_planned'])}) | {r['drop']:+.2f} | "
                   f"{r['agreement']:.2f} % | {r['seconds']:.1f} |")
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    from models.fashion_mnist import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="test images (default all)")
    parser.add_argument("--compressed", action="store_true")
    parser.add_argument("--heads", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--from-json", type=Path, nargs="*", default=None,
                        help="render recorded runs (their .json) instead of running")
    args = parser.parse_args(argv)
    if args.from_json:
        return render_recorded(args.from_json, args.out)
    start = machine()
    xc, yc = load("train", CALIB)
    test = load("test", args.limit)
    rows, packed, heads = [], [], []
    with tempfile.TemporaryDirectory(prefix="onnxcompress-ee-") as tmp:
        work = Path(tmp)
        calib = work / "calib.npz"
        np.savez(calib, input=xc, labels=yc)
        for name in args.models:
            src = REPO / "models" / f"{name}.onnx"
            if args.heads:
                heads += heads_table(name, work, calib, test)
                continue
            out = work / f"{name}.exits.onnx"
            rep, seconds = insert(src, out, calib)
            rows.append(evaluate(name, src, out, test, rep, seconds, args.rounds))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "notes"}), flush=True)
            if args.compressed:
                out = work / f"{name}.onnxc"
                rep, seconds = insert(src, out, calib, recipe=compressed_recipe())
                packed.append(evaluate(f"{name} (pruned, clustered, packed)", src, out, test,
                                       rep, seconds, args.rounds))
                packed[-1]["file_bytes"]["exits"] = out.stat().st_size
                print(json.dumps({k: v for k, v in packed[-1].items() if k != "notes"}),
                      flush=True)
    end = machine()
    lines = ["# Early exits (issue 10)", "",
             f"CPU: {start['cpu']} ({start['cpus']} vCPUs); one ONNX Runtime thread.",
             f"Load at start: `{start['uptime']}`; at end: `{end['uptime']}`.",
             (f"Command: `OPENBLAS_NUM_THREADS=1 python benchmarks/early_exit.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`"), "",
             (f"Calibration: the first {CALIB:,} training images; test: "
             f"{len(test[0]):,} test images; budget {BUDGET} points of top-1."), ""]
    if rows:
        lines += main_table(rows, "Early exit alone")
    if packed:
        lines += main_table(packed, "Prune → cluster → early exit → pack (container)", False)
    if heads:
        lines += heads_markdown(heads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"machine": {"start": start, "end": end}, "rows": rows, "packed": packed,
         "heads": heads}, indent=2))
    print("\n".join(lines))
    return 0


def render_recorded(paths: list[Path], out: Path) -> int:
    """The markdown of recorded runs (their .json), one section per run with its load."""
    lines = ["# Early exits (issue 10)", ""]
    for path in paths:
        run = json.loads(path.read_text())
        start, end = run["machine"]["start"], run["machine"]["end"]
        lines += [f"## Run {path.stem}", "",
                  (f"CPU: {start['cpu']} ({start['cpus']} vCPUs); one ONNX Runtime thread. "
                  f"Load at start: `{start['uptime']}`; at end: `{end['uptime']}`."), "",
                  (f"Calibration: the first {CALIB:,} training images; test: the 10,000 test "
                  f"images; budget {BUDGET} points of top-1."), ""]
        if run["rows"]:
            lines += main_table(run["rows"], "Early exit alone")
        if run["packed"]:
            lines += main_table(run["packed"], "Prune → cluster → early exit → pack (container)",
                                False)
        if run["heads"]:
            lines += heads_markdown(run["heads"])
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
