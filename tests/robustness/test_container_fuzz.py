"""Seeded mutation fuzzing of the container reader through runtime.Session (fuzz_harness.py).

Every case must be a clean refusal (an onnxcompress error), or accepted with the original's
outputs, or, after a mutation whose CRCs were recomputed, accepted with other outputs (a valid
container of another model). A crash, a hang, another exception type, or changed outputs behind
intact CRCs fail the test, listed with the case number to replay:
    python -m tests.robustness.fuzz_harness case FOLDER SEED CASE
benchmarks/fuzz_container.py runs the same loop for tens of thousands of cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .bombs import measure_bombs
from .fuzz_harness import FAILURES, fuzz, write_seeds

CASES = 300


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    write_seeds(folder)
    return folder


def test_mutated_containers_are_refused_or_read_right(seeds: Path):
    result = fuzz(seeds, CASES, seed=0, timeout=60)
    assert not result.failures, "\n".join(
        f"case {f['case']} {f['class']} {f['what']}: {f['detail'][:500]}" for f in result.failures)
    assert sum(result.counts.values()) == CASES
    assert result.counts["refused"] > CASES // 2  # most mutations must reach a check
    assert result.counts["same"] and result.counts["changed"]
    assert not any(result.counts[c] for c in FAILURES)


def test_bombs_cost_at_most_twice_the_declared_tensor(tmp_path):
    """Small sections that claim a lot, loaded by Session in a child process: the peak memory
    above the start (kernel high-water mark) stays within 2x the tensor the dims declare, ONNX
    Runtime's own copy of an accepted initializer included; lying ones are refused."""
    declared = 32 << 20
    wanted = {"zlib-4x", "codebook-2^32", "sparse-honest"}
    results = measure_bombs(tmp_path, declared, only=wanted)
    assert set(results) == wanted
    for name, r in results.items():
        assert r["peak"] is not None, (name, r)
        assert r["peak"] <= 2 * declared + (4 << 20), (name, r)  # plus allocator noise
    assert results["zlib-4x"]["outcome"].startswith("refused")
    assert results["codebook-2^32"]["outcome"].startswith("refused")
    assert results["sparse-honest"]["outcome"] == "accepted"
