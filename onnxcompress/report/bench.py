"""Time models on ONNX Runtime: batch-1 latency, median of repeated runs, one thread by default."""

from __future__ import annotations

import statistics
import time

import numpy as np


def latency_ms(session, feeds: dict[str, np.ndarray], *, runs: int = 30, warmup: int = 3) -> float:
    """Median wall time of `session.run` on the first sample of `feeds`, in milliseconds."""
    one = {k: v[:1] for k, v in feeds.items()}
    for _ in range(warmup):
        session.run(None, one)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, one)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000
