"""What one `Session.run` tells the XnorConv op: its session's state and where to report failure.

onnxruntime-extensions gives a Python op its inputs and string attributes only: not the session
that runs it, nor a way to fail the run (an exception raised in the op reaches its C++ side as
`pybind11::error_already_set`, which ends the process). So `Session.run` opens a `RunScope` in a
context variable for the duration of the ONNX Runtime call, which runs the op on the calling
thread (sequential execution, ONNX Runtime's default); the op reads its session's thread count
and weight cache from it, and on failure records the exception and sets the run's
`RunOptions.terminate`, so that ONNX Runtime stops before the next node and `Session.run`
re-raises the recorded exception. Nothing here is process-wide: two sessions never see each
other's settings, and a plain onnxruntime session (no scope) gets the op's defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class OpState:
    """What the custom ops keep per session."""

    threads: int  # XnorConv kernel threads
    prepared: dict = field(default_factory=dict)  # XnorConv weights laid out for the kernel


@dataclass
class RunScope:
    """One run: the session's op state and the run's outcome."""

    ops: OpState
    run_options: object  # onnxruntime.RunOptions of this run
    error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        """Record the first failure and ask ONNX Runtime to stop before the next node."""
        if self.error is None:
            self.error = exc
        self.run_options.terminate = True


_current: ContextVar[RunScope | None] = ContextVar("onnxcompress_run_scope", default=None)


@contextmanager
def run_scope(ops: OpState, run_options: object) -> Iterator[RunScope]:
    """Make a RunScope the current one (for this thread) while the block runs."""
    scope = RunScope(ops, run_options)
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


def current() -> RunScope | None:
    """The scope of the Session.run in progress on this thread, or None (a plain session)."""
    return _current.get()
