"""Bad XnorConv attributes through every way a model reaches the op: none may end the process.

A stride of 2**32 + 1 was truncated to 1 for the C kernel while the output was sized from the
full value (heap corruption, SIGABRT); any exception inside the Python op (group 2, an unknown
mode, stride 0, unparsable conv_attrs) ended the process through onnxruntime-extensions' C++
side. Each entry point runs in a child process, so a regression shows as a failed test with the
child's stderr, not as a dead test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxcompress.container import write_container

from ..runtime.test_session import xnor_model

REPO = Path(__file__).resolve().parents[2]

# name -> (conv_attrs, mode, what the refusal says)
BAD = {
    "stride-2^32+1": ("kernel_shape=3,3;strides=4294967297,1", "xnor", "outside 1..2147483647"),
    "stride-0": ("kernel_shape=3,3;strides=0,1", "xnor", "strides [0, 1] holds 0"),
    "group-2": ("kernel_shape=3,3;group=2", "xnor", "group=1 only"),
    "mode": ("kernel_shape=3,3", "xor", "unknown mode 'xor'"),
    "unparsable": ("kernel_shape=3;;pads=a", "xnor", "kernel_shape needs 2 values"),
    "no-kernel": ("strides=1,1", "xnor", "lacks kernel_shape"),
    "pads-2^31": ("kernel_shape=3,3;pads=2147483648,0,0,0", "xnor", "outside 0..2147483647"),
}


def _child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _results(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, f"the child died (status {r.returncode}): {r.stderr[-2000:]}"
    assert "terminate called" not in r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """bad/NAME.onnx and bad/NAME.onnxc for every case, and x.npy."""
    folder = tmp_path_factory.mktemp("bad")
    for name, (conv_attrs, mode, _) in BAD.items():
        model = xnor_model(conv_attrs, mode)
        onnx.save(model, str(folder / f"{name}.onnx"))
        write_container(model, folder / f"{name}.onnxc")
    utf8 = xnor_model()
    next(a for a in utf8.graph.node[0].attribute if a.name == "conv_attrs").s = b"\xff\xfe"
    onnx.save(utf8, str(folder / "not-utf8.onnx"))
    np.save(folder / "x.npy", np.ones((1, 5, 8, 8), np.float32))
    return folder


SESSION_CHILD = """
    import json, sys
    from pathlib import Path
    import numpy as np
    from onnxcompress.errors import OnnxCompressError
    from onnxcompress.runtime import Session
    PATCH
    folder = Path(FOLDER)
    x = np.load(folder / "x.npy")
    out = {}
    for suffix, how in COMBOS:
        for name in NAMES:
            path = folder / (name + suffix)
            if not path.exists():
                continue
            source = path.read_bytes() if how == "bytes" else path
            try:
                Session(source).run(None, {"x": x})
                result = "accepted"
            except OnnxCompressError as e:
                result = f"{type(e).__name__}: {e}"
            except Exception as e:
                result = f"OTHER {type(e).__name__}: {e}"
            out[f"{name}{suffix} {how}"] = result
    print(json.dumps(out))
"""
COMBOS = [(".onnx", "path"), (".onnx", "bytes"), (".onnxc", "path"), (".onnxc", "bytes")]


def _session_child(models: Path, names: list[str], patch: str = "") -> dict:
    code = (SESSION_CHILD.replace("PATCH", patch).replace("FOLDER", repr(str(models)))
            .replace("COMBOS", repr(COMBOS)).replace("NAMES", repr(names)))
    return _results(_child(code))


def test_session_refuses_bad_attributes_when_created(models: Path):
    out = _session_child(models, [*BAD, "not-utf8"])
    for suffix, how in COMBOS:
        for name, (_, _, says) in BAD.items():
            got = out[f"{name}{suffix} {how}"]
            assert got.startswith("BadInputError: "), got
            assert "XnorConv node 'xc': " in got and says in got, got
            where = str(models / f"{name}{suffix}") if how == "path" else "bytes: "
            assert where in got, got
    assert "attribute 'conv_attrs' is not UTF-8 text" in out["not-utf8.onnx path"]


def test_the_op_itself_reports_through_session_run(models: Path):
    """Past the load-time check (here switched off), the op's own checks still turn every case
    into a SessionError of Session.run: the op records the error and stops the run. (A string
    attribute that is not UTF-8 cannot be helped there: onnxruntime-extensions fails to decode
    it before the op runs, which only the load-time check prevents.)"""
    patch = ("from onnxcompress.runtime import session as s\n"
             "    s.check_custom_nodes = lambda model, where: None")
    out = _session_child(models, list(BAD), patch)
    for name, (_, _, says) in BAD.items():
        got = out[f"{name}.onnx path"]
        assert got.startswith("SessionError: ") and says in got, got


def test_a_plain_onnxruntime_session_survives_with_an_empty_output(models: Path):
    code = f"""
        import json, warnings
        import numpy as np, onnxruntime as ort
        from onnxcompress.runtime import session_options
        out = {{}}
        x = np.ones((1, 5, 8, 8), np.float32)
        for name in {sorted(BAD)!r}:
            sess = ort.InferenceSession({str(models)!r} + f"/{{name}}.onnx", session_options())
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                y = sess.run(None, {{"x": x}})[0]
            out[name] = [y.size, any("XnorConv failed" in str(w.message) for w in caught)]
        print(json.dumps(out))
    """
    out = _results(_child(code))
    assert all(v == [0, True] for v in out.values()), out


def test_the_kernel_refuses_them_too():
    code = """
        import json
        import numpy as np
        from onnxcompress.kernels.xnor_native import xnor_conv
        from onnxcompress.kernels.xnor_ref import pack_weights
        from onnxcompress.ops import decode_op_attrs
        x = np.ones((1, 5, 8, 8), np.float32)
        bits, alpha = pack_weights(np.ones((4, 5, 3, 3), np.float32))
        out = {}
        for attrs in [dict(strides=(2**32 + 1, 1)), dict(strides=(1, 2**32 + 1)), dict(group=2),
                      dict(mode="xor"), dict(dilations=(0, 1)), dict(pads=(0, 0, 2**33, 0))]:
            try:
                xnor_conv(x, bits, alpha, None, **{"kernel_shape": (3, 3), **attrs})
                out[str(attrs)] = "accepted"
            except ValueError as e:
                out[str(attrs)] = str(e)
        print(json.dumps(out))
    """
    out = _results(_child(code))
    assert all(v != "accepted" for v in out.values()), out


@pytest.mark.parametrize(("name", "suffix"), [("stride-2^32+1", ".onnx"), ("group-2", ".onnxc")])
def test_cli_run_exits_2_with_one_line(models: Path, name: str, suffix: str):
    path = models / f"{name}{suffix}"
    r = subprocess.run([sys.executable, "-m", "onnxcompress", "run", str(path), "--input",
                        str(models / "x.npy")], cwd=REPO, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: XnorConv node 'xc': ")
