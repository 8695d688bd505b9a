"""The few exception classes of onnxcompress, each with the CLI exit code it maps to."""

from __future__ import annotations


class OnnxCompressError(Exception):
    """Base class: every error the library raises on purpose."""

    exit_code = 4


class BadInputError(OnnxCompressError):
    """The user gave us something we cannot use: a file, a data array, an option."""

    exit_code = 2


class UnsupportedModelError(BadInputError):
    """The model is valid ONNX but has nothing a pass can work on, or a feature we do not handle."""


class RecipeError(BadInputError):
    """A recipe names an unknown pass or key, or a value of the wrong type."""


class ContainerError(BadInputError):
    """A container file is truncated, corrupted, or of an unknown version."""

    def __init__(self, message: str, section: str | None = None):
        super().__init__(message)
        self.section = section


class SessionError(BadInputError):
    """ONNX Runtime or a custom op refused a model or its inputs, at load or at run time.

    The message is one short line naming the user's file; `detail` keeps the full text of the
    underlying error (ONNX Runtime's run to hundreds of characters) for a verbose mode, and the
    original exception is the `__cause__`."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = message if detail is None else detail


class PassError(OnnxCompressError):
    """A pass failed; names the pass and the passes that ran before it."""

    def __init__(self, step: str, history: list[str], cause: BaseException):
        before = ", ".join(history) if history else "none"
        super().__init__(f"step '{step}' failed: {cause} (steps run before it: {before})")
        self.step = step
        self.history = history
        self.cause = cause


class AccuracyBudgetExceeded(OnnxCompressError):
    """`compress --max-accuracy-drop` was exceeded (the outputs are still written)."""

    exit_code = 3
