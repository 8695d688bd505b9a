"""Every command with every class of bad input: exit 2 (3 for the budget), one line that names
the user's file, no traceback, nothing written, no input changed (issue 8)."""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper
from onnxcompress.cli.main import main

from onnxcompress.container import write_container
from onnxcompress.io import save_model
from tests.conftest import tiny_cnn, tiny_data
from tests.robustness.fuzz_harness import graph_model, join, set_graph_model, split

PASS_COMMANDS = ["compress", "prune", "cluster", "binarize", "early-exit"]  # normalize, passes
MODEL_COMMANDS = [*PASS_COMMANDS, "pack", "run", "report"]
DATA_COMMANDS = [*PASS_COMMANDS, "run", "report"]


def _bad_models(d: Path) -> dict[str, Path]:
    """Model files that must be refused, by kind."""
    good = tiny_cnn()
    out = {}
    out["missing"] = d / "missing.onnx"
    (d / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 50)
    out["garbage"] = d / "garbage.onnx"
    blob = good.SerializeToString()
    (d / "truncated.onnx").write_bytes(blob[: len(blob) // 2])
    out["truncated"] = d / "truncated.onnx"
    no_out = onnx.ModelProto()
    no_out.CopyFrom(good)
    del no_out.graph.output[:]
    onnx.save(no_out, str(d / "no_outputs.onnx"))
    out["no outputs"] = d / "no_outputs.onnx"
    ext = d / "ext"
    ext.mkdir()
    onnx.save(good, str(ext / "m.onnx"), save_as_external_data=True, location="m.data",
              size_threshold=0)
    (ext / "m.data").unlink()
    out["external data missing"] = ext / "m.onnx"
    return out


def _lossy_bad_models(d: Path) -> dict[str, Path]:
    """Models a lossy pass must refuse, though `pack` may store them losslessly."""
    out = {}
    nan = tiny_cnn()
    w = numpy_helper.to_array(nan.graph.initializer[0]).copy()
    w.flat[0] = np.nan
    nan.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, nan.graph.initializer[0].name))
    onnx.save(nan, str(d / "nan.onnx"))
    out["NaN weights"] = d / "nan.onnx"
    half = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float16[N, 64] x) => (float16[N, 10] y) { y = Gemm <transB = 1> (x, w, b) }""")
    half.graph.initializer.extend([
        numpy_helper.from_array(np.ones((10, 64), np.float16), "w"),
        numpy_helper.from_array(np.zeros(10, np.float16), "b")])
    onnx.save(half, str(d / "half.onnx"))
    out["float16 weights"] = d / "half.onnx"
    return out


def _bad_data(d: Path) -> dict[str, Path]:
    """Data files that must be refused, by kind."""
    good = tiny_data(16)
    out = {"missing": d / "none.npz"}
    (d / "garbage.npz").write_bytes(b"not a zip at all")
    out["garbage"] = d / "garbage.npz"
    nan = dict(good)
    nan["input"] = good["input"].copy()
    nan["input"][0, 0, 0, 0] = np.inf
    np.savez(d / "nan.npz", **nan)
    out["NaN data"] = d / "nan.npz"
    np.savez(d / "shape.npz", input=good["input"][:, :, :4])
    out["wrong shape"] = d / "shape.npz"
    np.savez(d / "dtype.npz", input=good["input"].astype(np.float64))
    out["wrong dtype"] = d / "dtype.npz"
    np.savez(d / "key.npz", image=good["input"])
    out["wrong key"] = d / "key.npz"
    np.savez(d / "labels.npz", input=good["input"], labels=good["labels"] + 4)
    out["labels out of range"] = d / "labels.npz"
    np.savez(d / "bomb.npz", input=good["input"])
    _claim_huge(d / "bomb.npz")
    out["header claims 10^12 elements"] = d / "bomb.npz"
    return out


def _bad_containers(d: Path, model: Path, container: Path) -> dict[str, Path]:
    """Files `unpack` must refuse, by kind (made from a good plain .onnx and container)."""
    blob = container.read_bytes()
    out = {"missing": d / "none.onnxc", "plain onnx": model}
    (d / "garbage.onnxc").write_bytes(b"\x08\x07garbage" * 50)
    out["garbage"] = d / "garbage.onnxc"
    (d / "truncated.onnxc").write_bytes(blob[: len(blob) - 7])
    out["truncated"] = d / "truncated.onnxc"
    (d / "flipped.onnxc").write_bytes(blob[:-1] + bytes([blob[-1] ^ 0x10]))
    out["a byte changed under its CRC"] = d / "flipped.onnxc"
    layout = split(blob)
    graph = graph_model(layout)
    t = graph.graph.initializer[0]
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    set_graph_model(layout, graph)
    (d / "external.onnxc").write_bytes(join(layout))
    out["external data"] = d / "external.onnxc"
    return out


def _claim_huge(path: Path) -> None:
    """Rewrite the stored array's header to claim 10^12 elements (same length, stored zip)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        name = z.namelist()[0]
        data = z.read(name)
    old = data[10 : 10 + int.from_bytes(data[8:10], "little")]
    shape = old[old.index(b"(") : old.index(b")") + 1]
    new = old.replace(shape, b"(1000000, 1000000)".ljust(len(shape)))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, data.replace(old, new[: len(old)]))


def _cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def _refused(result, code: int = 2, names: str | None = None) -> None:
    # stderr without the progress lines (stdout holds what a command printed before it failed,
    # such as `run`'s outputs when saving them fails)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("  .. ")]
    text = "\n".join(lines)
    assert result.exit_code == code, result.output
    assert "Traceback" not in text and text.strip().startswith("error:"), text
    assert len(text.strip().splitlines()) <= 2, text  # one line (+ the -v hint)
    if names:
        assert names in text, text
    assert "onnxcompress-" not in text and "in.onnx" not in text, text  # no temporary copy


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad")
    model = d / "tiny.onnx"
    save_model(tiny_cnn(), model)
    data = d / "data.npz"
    np.savez(data, **tiny_data(16))
    container = d / "tiny.onnxc"
    write_container(tiny_cnn(), container)
    return {"dir": d, "model": model, "data": data, "container": container,
            "models": _bad_models(d), "lossy": _lossy_bad_models(d), "data_files": _bad_data(d),
            "containers": _bad_containers(d, model, container)}


def _run_case(files: dict, argv: list, code: int = 2, names: str | None = None,
              written: Callable[[Path], bool] | None = None) -> None:
    d = files["dir"]
    inputs = [p for p in d.rglob("*") if p.is_file()]
    before = _digest(inputs)
    out = d / "out"
    out.mkdir(exist_ok=True)
    for p in out.iterdir():
        p.unlink()
    _refused(_cli(*argv), code, names)
    assert _digest(inputs) == before  # no input file changed
    leftovers = [p.name for p in out.iterdir() if not (written and written(p))]
    assert leftovers == [], leftovers


def _argv(command: str, model: Path, out: Path, data: Path | None = None) -> list:
    if command == "run":
        return ["run", model, "--input", data, "-o", out / "o.npz"]
    if command == "report":
        return ["report", model, "--json", out / "r.json", "--no-latency"] + (
            ["--eval", data] if data else [])
    if command in ("pack", "unpack"):
        return [command, model, "-o", out / ("o.onnxc" if command == "pack" else "o.onnx")]
    return [command, model, "-o", out / "o.onnx", "--no-latency"] + (
        ["--calib", data] if data else [])


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "no outputs",
                                  "external data missing"])
def test_bad_models(files, command: str, kind: str) -> None:
    model = files["models"][kind]
    _run_case(files, _argv(command, model, files["dir"] / "out", files["data"]),
              names=str(model))


@pytest.mark.parametrize("command", PASS_COMMANDS)
@pytest.mark.parametrize("kind", ["NaN weights", "float16 weights"])
def test_models_a_lossy_pass_refuses(files, command: str, kind: str) -> None:
    model = files["lossy"][kind]
    _run_case(files, _argv(command, model, files["dir"] / "out"), names=str(model))


@pytest.mark.parametrize("kind", ["missing", "garbage", "plain onnx", "truncated",
                                  "a byte changed under its CRC", "external data"])
def test_bad_containers(files, kind: str) -> None:
    container = files["containers"][kind]
    _run_case(files, _argv("unpack", container, files["dir"] / "out"), names=str(container))


@pytest.mark.parametrize("command", DATA_COMMANDS)
@pytest.mark.parametrize("kind", ["missing", "garbage", "NaN data",
                                  "wrong shape", "wrong dtype", "wrong key",
                                  "labels out of range", "header claims 10^12 elements"])
def test_bad_data(files, command: str, kind: str) -> None:
    data = files["data_files"][kind]
    if command == "run" and kind == "labels out of range":
        pytest.skip("run ignores labels")
    _run_case(files, _argv(command, files["model"], files["dir"] / "out", data), names=str(data))


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, "unpack"])
def test_outputs_never_overwrite_inputs(files, command: str) -> None:
    model, data = files["model"], files["data"]
    alias = files["dir"] / "sub" / ".." / model.name
    (files["dir"] / "sub").mkdir(exist_ok=True)
    if command == "report":
        cases = [["report", model, "--json", alias, "--no-latency"],
                 ["report", model, "--eval", data, "--json", data, "--no-latency"]]
    elif command == "run":
        cases = [["run", model, "--input", data, "-o", alias], ["run", model, "--input", data,
                                                                "-o", data]]
    elif command == "pack":
        named = files["dir"] / "named.onnxc"  # an ONNX file whose name ends in .onnxc
        named.write_bytes(model.read_bytes())
        cases = [["pack", named, "-o", files["dir"] / "sub" / ".." / named.name]]
    elif command == "unpack":
        container = files["container"]
        cases = [["unpack", container, "-o", files["dir"] / "sub" / ".." / container.name]]
    else:
        out = files["dir"] / "out" / "o.onnx"
        cases = [[command, model, "-o", alias, "--no-latency"],
                 [command, model, "-o", out, "--json", model, "--no-latency"],
                 [command, model, "-o", out, "--json", out, "--no-latency"],
                 [command, model, "-o", data, "--calib", data, "--no-latency"]]
    for argv in cases:
        _run_case(files, argv)


def test_special_files_are_never_replaced(files) -> None:
    fifo = files["dir"] / "pipe.onnx"
    os.mkfifo(fifo)
    try:
        for argv in (["prune", files["model"], "-o", fifo, "--sparsity", 0.5, "--no-latency"],
                     ["pack", files["model"], "-o", fifo.with_suffix(".onnxc")],
                     ["report", files["model"], "--json", fifo, "--no-latency"]):
            if argv[0] == "pack":
                os.mkfifo(argv[3])
            _run_case(files, argv, names="not a regular file")
            assert not Path(argv[3]).is_file()
    finally:
        fifo.unlink()
        fifo.with_suffix(".onnxc").unlink(missing_ok=True)


class _FillingDisk:
    """A file on a disk that fills up: the first `room` bytes are written, then every write
    fails with `code` (ENOSPC, or EFBIG past the file system's largest file)."""

    def __init__(self, f, code: int, room: int = 100):
        self._f, self._code, self._room = f, code, room

    def write(self, data) -> int:
        if len(data) > self._room:
            self._f.write(bytes(data[: self._room]))
            self._room = 0
            raise OSError(self._code, os.strerror(self._code))
        self._room -= len(data)
        return self._f.write(data)

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _disk_fills_up(monkeypatch, code: int) -> None:
    """Every file onnxcompress writes (its temporary files, whatever library writes them)
    lands on a disk that fills up."""
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name.startswith(".onnxcompress-"):
            return _FillingDisk(f, code)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on the device"),
                                          (errno.EFBIG, "the file is too large")])
@pytest.mark.parametrize("command", ["prune", "pack", "unpack", "run", "report"])
def test_a_full_disk_is_bad_input_and_leaves_no_partial_file(files, monkeypatch, command: str,
                                                              code: int, reason: str) -> None:
    """Models (onnx.save), containers, output arrays (np.savez) and reports all fill the disk
    through the atomic writer: exit 2 naming the output, no temporary file left, an existing
    output kept whole."""
    source = files["container"] if command == "unpack" else files["model"]
    argv = _argv(command, source, files["dir"] / "out", files["data"])
    target = Path(argv[argv.index("--json" if command == "report" else "-o") + 1])
    _disk_fills_up(monkeypatch, code)
    _run_case(files, argv, names=f"{target}: cannot write: {reason}")
    target.write_bytes(b"the user's old output")
    try:
        _refused(_cli(*argv), names=f"{target}: cannot write: {reason}")
        assert target.read_bytes() == b"the user's old output"
        assert [p.name for p in target.parent.iterdir()] == [target.name]
    finally:
        target.unlink()  # the out folder is not an input of the next case


@pytest.mark.parametrize("budget", ["nan", "-1"])
def test_budgets_that_mean_nothing(files, budget: str) -> None:
    _run_case(files, ["compress", files["model"], "-o", files["dir"] / "out" / "o.onnxc",
                      "--eval", files["data"], "--max-accuracy-drop", budget, "--no-latency"])


def test_a_budget_without_evaluation_data(files) -> None:
    _run_case(files, ["compress", files["model"], "-o", files["dir"] / "out" / "o.onnxc",
                      "--max-accuracy-drop", "1", "--no-latency"], names="--eval")


@pytest.mark.parametrize("text, why", [
    (b'[[steps]]\npass = "prune"\n# \xff\xfe\n', "not UTF-8"),
    (b'[[steps]]\npass = "prune"\nper_layer = [0.5]\n', "expected a table"),
    (b'[[steps]]\npass = "prune"\nsparsity = "high"\n', "expected a number"),
    (b'[[steps]]\npass = "prune"\nspasity = 0.5\n', "unknown key"),
    (b'[[steps]]\npass = "prun"\n', "unknown pass"),
    (b'steps = 3\n', "'steps' holding a list"),
])
def test_bad_recipes(files, text: bytes, why: str) -> None:
    recipe = files["dir"] / "recipe.toml"
    recipe.write_bytes(text)
    _run_case(files, ["compress", files["model"], "-o", files["dir"] / "out" / "o.onnxc",
                      "--recipe", recipe, "--no-latency"], names=why)


def test_npy_bytes_in_a_file_named_npz_are_one_array(files, tmp_path) -> None:
    x = tiny_data(4)["input"]
    np.save(tmp_path / "x.npy", x)
    os.replace(tmp_path / "x.npy", tmp_path / "x.npz")
    r = _cli("run", files["model"], "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "y.npz")["logits"].shape == (4, 4)


def test_an_unexpected_error_is_exit_4_without_a_traceback(files, monkeypatch) -> None:
    from onnxcompress.passes import prune

    def boom(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(prune, "_select", boom)
    r = _cli("prune", files["model"], "-o", files["dir"] / "out" / "o.onnx", "--no-latency")
    assert r.exit_code == 4 and "Traceback" not in r.output
    assert "step 'prune' failed: a bug" in r.output
