"""The one error boundary of the command line: every error becomes one short line naming what
went wrong and the documented exit code (2 bad input, 3 over budget, 4 unexpected, 130
interrupted), never a traceback unless -v asks for it."""

from __future__ import annotations

import sys

import click

from onnxcompress.errors import OnnxCompressError

EXIT_INTERNAL = 4  # an error onnxcompress did not expect
EXIT_INTERRUPTED = 130
MESSAGE_CHARS = 400  # longer messages (ONNX Runtime's run for lines) are cut; -v shows all


def _short(text: str) -> str:
    """One line of at most MESSAGE_CHARS characters."""
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


def _fail(e: BaseException, code: int, verbose: bool, prefix: str = "") -> None:
    message = f"{prefix}{e}" if str(e) else f"{prefix}{type(e).__name__}"
    click.echo(f"error: {_short(message)}", err=True)
    if verbose:
        import traceback

        detail = getattr(e, "detail", None)  # ONNX Runtime's whole message, when cut short
        if detail:
            click.echo(detail, err=True)
        click.echo("".join(traceback.format_exception(e)), err=True)
    elif len(" ".join(message.split())) > MESSAGE_CHARS or code == EXIT_INTERNAL:
        click.echo("  (run with -v for the full message)", err=True)
    sys.exit(code)


class ErrorBoundary(click.Group):
    """The one error boundary of the command line: every error becomes one clear line and its
    documented exit code (2 bad input, 3 over budget, 4 unexpected), never a traceback."""

    def invoke(self, ctx):
        verbose = bool(ctx.params.get("verbose"))
        try:
            return super().invoke(ctx)
        except OnnxCompressError as e:
            _fail(e, e.exit_code, verbose)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except MemoryError as e:
            _fail(e, EXIT_INTERNAL, verbose, "out of memory: ")
        except Exception as e:  # noqa: BLE001 - the boundary: nothing may leave as a traceback
            _fail(e, EXIT_INTERNAL, verbose, "internal error (please report it): ")


