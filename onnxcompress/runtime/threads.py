"""How many threads a `Session` may use, and the documented maximum.

ONNX Runtime starts every intra-op thread it is asked for: `threads=3000` on two CPUs made a
run take minutes. A thread count is therefore refused above MAX_THREADS_PER_CPU times the CPUs
this process may run on (its affinity mask, not the machine's CPU count); the CLI's `--threads`
uses the same bound through `max_threads()`.
"""

from __future__ import annotations

import operator
import os

from ..errors import BadInputError

MAX_THREADS_PER_CPU = 4  # more threads than this per usable CPU only adds switching


def cpu_count() -> int:
    """CPUs this process may run on (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The largest thread count a Session accepts: MAX_THREADS_PER_CPU x cpu_count()."""
    return MAX_THREADS_PER_CPU * cpu_count()


def check_threads(threads: int) -> int:
    """`threads` as an int within 1..max_threads(), else a BadInputError saying the range."""
    try:
        n = operator.index(threads)
    except TypeError:
        raise BadInputError(f"threads must be an integer, got {threads!r}") from None
    top = max_threads()
    if not 1 <= n <= top:
        raise BadInputError(
            f"threads = {n} is outside 1..{top} ({MAX_THREADS_PER_CPU} per CPU this process "
            f"may use, {cpu_count()} here)"
        )
    return n
