"""`python -m onnxcompress` and the `onnxcompress` console script."""

from __future__ import annotations


def main() -> None:
    from onnxcompress.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
