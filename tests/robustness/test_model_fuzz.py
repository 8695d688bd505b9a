"""Seeded mutation fuzzing of the model loader through the whole compress job (fuzz_harness.py,
model target): every mutated model is refused with an onnxcompress error and nothing written,
or compressed and run; a crash, a hang or another exception type fails the test, listed with
the case to replay (python -m tests.robustness.fuzz_harness case FOLDER SEED CASE).
benchmarks/fuzz_container.py --target model runs the same loop at scale."""

from __future__ import annotations

from pathlib import Path

from .fuzz_harness import FAILURES, fuzz, write_model_seeds

CASES = 200


def test_mutated_models_are_refused_or_compressed(tmp_path: Path):
    write_model_seeds(tmp_path)
    result = fuzz(tmp_path, CASES, seed=0, timeout=120)
    assert not result.failures, "\n".join(
        f"case {f['case']} {f['class']} {f['what']}: {f['detail'][:800]}" for f in result.failures)
    assert sum(result.counts.values()) == CASES
    assert result.counts["refused"] > CASES // 3 and result.counts["accepted"]
    assert not any(result.counts[c] for c in FAILURES)
