"""The runtime must never import the passes (design card): a user who only runs compressed models
needs onnxcompress.runtime and its kernels, nothing else."""

from __future__ import annotations

import subprocess
import sys


def test_runtime_does_not_import_passes():
    code = ("import sys, onnxcompress.runtime; "
            "bad = [m for m in sys.modules if m.startswith(('onnxcompress.passes', "
            "'onnxcompress.pipeline', 'onnxcompress.recipe', 'onnxcompress.compress', "
            "'onnx_graphsurgeon'))]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
