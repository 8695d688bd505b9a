"""`onnxcompress binarize`, then `run` and `pack`, on small seeded models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnxcompress.cli.main import main

from onnxcompress.runtime import Session
from tests.passes.binary_nets import binary_net, float_net, images, run_ort


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def binary_path(tmp_path):
    p = tmp_path / "bnet.onnx"
    onnx.save(binary_net(), str(p))
    return p


def test_help_has_an_example():
    r = cli("binarize", "--help")
    assert r.exit_code == 0
    assert "onnxcompress binarize model.onnx -o bin.onnx --mode xnor --target native" in r.output


@pytest.mark.parametrize("target", ["native", "portable"])
def test_trained_binary_model_unchanged_then_run_and_pack(binary_path, tmp_path, target):
    out, report = tmp_path / f"b_{target}.onnx", tmp_path / "r.json"
    x = images((2, 8, 8), n=5)
    np.savez(tmp_path / "eval.npz", input=x)
    r = cli("binarize", binary_path, "-o", out, "--mode", "xnor", "--target", target,
            "--eval", tmp_path / "eval.npz", "--json", report, "--no-latency")
    assert r.exit_code == 0, r.output
    rows = {row["layer"]: row for row in json.loads(report.read_text())["layers"]}
    op = "XnorConv" if target == "native" else "Conv"
    assert [(rows[n]["op"], rows[n]["binarized"], rows[n]["bits"]) for n in ("Conv_2", "Conv_4")] \
        == [(op, True, 1)] * 2
    assert rows["Conv_0"]["binarized"] is False
    stage = json.loads(report.read_text())["stages"][-1]
    assert stage["agreement"] == 100.0 and stage["max_abs_diff"] < 1e-4
    np.testing.assert_allclose(Session(str(out)).run(None, {"input": x})[0],
                               run_ort(binary_net(), x, optimize=True), rtol=1e-5, atol=1e-5)
    np.save(tmp_path / "x.npy", x)
    assert cli("run", out, "--input", tmp_path / "x.npy").exit_code == 0
    packed = tmp_path / f"b_{target}.onnxc"
    r = cli("pack", out, "-o", packed)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(Session(str(packed)).run(None, {"input": x})[0],
                                  Session(str(out)).run(None, {"input": x})[0])


def test_layers_list_and_bwn(tmp_path):
    src, out, report = tmp_path / "f.onnx", tmp_path / "f_bin.onnx", tmp_path / "r.json"
    onnx.save(float_net(), str(src))
    r = cli("binarize", src, "-o", out, "--mode", "bwn", "--layers", "Conv_2,Conv_5",
            "--json", report, "--no-latency")
    assert r.exit_code == 0, r.output
    notes = "\n".join(json.loads(report.read_text())["notes"])
    assert "binarized 2 layer(s): Conv_2, Conv_5" in notes


def test_explicit_depthwise_layer_is_a_clear_error(tmp_path):
    src = tmp_path / "f.onnx"
    onnx.save(float_net(), str(src))
    r = CliRunner().invoke(main, ["binarize", str(src), "--layers", "Conv_4", "--no-latency"])
    assert r.exit_code == 2
    assert "cannot binarize layer 'Conv_4'" in r.output and "depthwise" in r.output


def test_bad_mode_is_rejected(binary_path):
    r = CliRunner().invoke(main, ["binarize", str(binary_path), "--mode", "ternary"])
    assert r.exit_code == 2 and "ternary" in r.output


def test_input_scaling_flag(tmp_path):
    src, out = tmp_path / "f.onnx", tmp_path / "k.onnx"
    onnx.save(float_net(), str(src))
    r = cli("binarize", src, "-o", out, "--layers", "Conv_2", "--input-scaling", "--no-latency")
    assert r.exit_code == 0, r.output
    assert "Abs" in {n.op_type for n in onnx.load(str(out)).graph.node}
    r = CliRunner().invoke(main, ["binarize", str(src), "--mode", "bwn", "--input-scaling"])
    assert r.exit_code == 2 and "mode 'xnor' only" in r.output
