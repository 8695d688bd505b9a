"""Container and model fuzzing at scale: the seeded mutation loops of tests/robustness (through
runtime.Session, or for `--target model` through the whole compress job, in a child process
restarted after a crash or hang), and the peak memory of small sections that claim a lot
("bombs", container target).

    python benchmarks/fuzz_container.py [--target container|model] [--cases 20000] [--seed 0]
                                        [--timeout 60] [--bomb-mib 256] [--workdir DIR]
                                        [--json OUT]

Prints the count of each class (refused, same, changed; FAILURE classes crash, hang, error,
silent: see tests/robustness/fuzz_harness.py), every failure with the command that replays it,
and, per bomb, the peak memory above the start (the kernel's high-water mark) relative to the
declared tensor size (ONNX Runtime's own copy of an accepted initializer is half of 2x). Exits 1
when any case failed or a tensor bomb exceeded 2x (plus 4 MiB of interpreter noise).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.robustness.bombs import measure_bombs  # after the path set-up
from tests.robustness.fuzz_harness import (
    CLASSES,
    FAILURES,
    fuzz,
    write_model_seeds,
    write_seeds,
)

BOMB_LIMIT = 2.0  # peak memory over the declared tensor size
NOISE = 4 << 20  # what the interpreter and ONNX Runtime allocate around a load, whatever its size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=["container", "model"], default="container")
    p.add_argument("--cases", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case before 'hang'")
    p.add_argument("--bomb-mib", type=int, default=256, help="declared tensor size of the bombs")
    p.add_argument("--workdir", type=Path, help="keep the seeds here (default: a temp folder)")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        seeds = work / "seeds"
        (write_model_seeds if a.target == "model" else write_seeds)(seeds)
        start = time.monotonic()

        def progress(done: int, counts) -> None:
            if done % 1000 == 0:
                print(f"  {done} cases, {time.monotonic() - start:.0f} s: "
                      + ", ".join(f"{c} {counts.get(c, 0)}" for c in CLASSES), flush=True)

        result = fuzz(seeds, a.cases, seed=a.seed, timeout=a.timeout, progress=progress)
        took = time.monotonic() - start
        print(f"\n{a.cases} cases (seed {a.seed}) in {took:.0f} s")
        for c in CLASSES:
            flag = "  <- FAILURE" if c in FAILURES and result.counts.get(c) else ""
            print(f"  {c:8s} {result.counts.get(c, 0):7d}{flag}")
        for f in result.failures:
            print(f"\ncase {f['case']} {f['class']} {f['what']}\n  {f['detail'][:1500]}\n"
                  f"  replay: python -m tests.robustness.fuzz_harness case {seeds} {a.seed} "
                  f"{f['case']}")

        declared = a.bomb_mib << 20
        bombs = {}
        if a.target == "container":
            print(f"\nbombs, declared tensor {a.bomb_mib} MiB (peak above the start / declared):")
            bombs = measure_bombs(work / "bombs", declared)
        worst = max((r["ratio"] for n, r in bombs.items() if r["ratio"] is not None
                     and not n.startswith("graph")), default=None)
        for name, r in bombs.items():
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            size = r.get("file_bytes", "?")
            print(f"  {name:18s} {ratio:>7s}  file {size} B  {r['outcome'][:90]}")
        if worst is not None:
            print(f"worst tensor bomb: {worst:.2f}x the declared size")

        if a.json:
            a.json.write_text(json.dumps({
                "target": a.target, "cases": a.cases, "seed": a.seed, "seconds": took,
                "counts": dict(result.counts), "failures": result.failures,
                "bomb_declared_bytes": declared, "bombs": bombs, "worst_bomb_ratio": worst,
            }, indent=2))
    bad_bomb = any(r["peak"] is None or (r["peak"] > BOMB_LIMIT * declared + NOISE
                                         and not n.startswith("graph"))
                   for n, r in bombs.items())
    return 1 if result.failures or bad_bomb else 0


if __name__ == "__main__":
    sys.exit(main())
