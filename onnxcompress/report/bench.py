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


def mean_latency_ms(session, feeds: dict[str, np.ndarray], *, samples: int = 500,
                    rounds: int = 3) -> float:
    """Mean batch-1 wall time over the first `samples` samples of `feeds`, in milliseconds:
    what a model whose cost depends on its input (early exits) costs on average. The median
    over `rounds` passes, after one warm-up pass."""
    n = min(samples, len(next(iter(feeds.values()))))
    ones = [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(n)]
    means = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        for one in ones:
            session.run(None, one)
        if r:
            means.append((time.perf_counter() - t0) / n)
    return statistics.median(means) * 1000


def throughput(session, feeds: dict[str, np.ndarray], *, batch: int = 64, samples: int = 1024,
               rounds: int = 3) -> float:
    """Samples per second at batch `batch` over the first `samples` samples (whole batches
    only), the median over `rounds` passes after one warm-up pass."""
    n = min(samples, len(next(iter(feeds.values()))))
    chunks = [{k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, n - batch + 1, batch)]
    if not chunks:
        chunks = [{k: v[:n] for k, v in feeds.items()}]
    count = sum(len(next(iter(c.values()))) for c in chunks)
    rates = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        for chunk in chunks:
            session.run(None, chunk)
        if r:
            rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)
