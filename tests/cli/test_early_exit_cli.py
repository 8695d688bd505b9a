"""`onnxcompress early-exit` and early exits in recipes: outputs, reports, composition with
prune/cluster/pack, and bad inputs (exit 2, one line naming the file, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnxcompress.cli.main import main

from onnxcompress.exits import ExitTable
from onnxcompress.io import load_any
from onnxcompress.runtime import Session
from tests.passes.exit_nets import images, kinds, resnet


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "res.onnx"
    onnx.save(resnet(), str(model))
    calib, evals = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, input=images(600))
    np.savez(evals, input=images(300, seed=7), labels=kinds(300, seed=7))
    return model, calib, evals


def test_help_has_an_example():
    r = cli("early-exit", "--help")
    assert r.exit_code == 0 and "onnxcompress early-exit" in r.output and "Example" in r.output


def test_early_exit_writes_a_drop_in_model_and_reports_exits(tmp_path, files):
    model, calib, evals = files
    out, js = tmp_path / "out.onnx", tmp_path / "r.json"
    r = cli("early-exit", model, "-o", out, "--calib", calib, "--eval", evals,
            "--max-accuracy-drop", 5, "--json", js)
    assert r.exit_code in (0, 3), r.output  # 3: the eval drop may exceed a tiny net's budget
    assert "early exits" in r.output and "MFLOPs" in r.output and "batch-64/s" in r.output
    report = json.loads(js.read_text())
    assert report["exits"][-1]["exit"] == "end" and report["exit_criterion"] == "max-prob"
    assert report["stages"][0]["flops"] > report["stages"][1]["flops"] > 0
    assert report["throughput"]["early-exit"] > 0 and report["latency_ms"]["early-exit"] > 0
    shares = [e["share"] for e in report["exits"]]
    assert abs(sum(shares) - 1) < 1e-9
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "exit_index"]
    r = cli("report", out, "--baseline", model, "--eval", evals, "--no-latency")
    assert r.exit_code == 0 and "early exits" in r.output and "measured %" in r.output


def test_prune_cluster_exits_pack(tmp_path, files):
    model, calib, _ = files
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\npass = "prune"\nmode = "uniform"\nsparsity = 0.5\n'
                      '[[steps]]\npass = "cluster"\n'
                      '[[steps]]\npass = "early_exit"\nmax_drop = 5.0\nexit_overhead = 1e4\n')
    packed, plain = tmp_path / "small.onnxc", tmp_path / "small.onnx"
    for out in (packed, plain):
        r = cli("compress", model, "-o", out, "--recipe", recipe, "--calib", calib,
                "--no-latency")
        assert r.exit_code == 0, r.output
    assert packed.stat().st_size < plain.stat().st_size
    unpacked = load_any(packed)  # the container keeps the If branches and the exit table
    assert ExitTable.from_doc(unpacked.graph.doc_string) is not None
    assert any(n.op_type == "If" for n in unpacked.graph.node)
    x = images(7, seed=11)
    ref = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        got = Session(packed).run(None, {"input": x[:batch]})
        want = ref.run(None, {"input": x[:batch]})
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    np.save(tmp_path / "x.npy", x)
    r = cli("run", packed, "--input", tmp_path / "x.npy")
    assert r.exit_code == 0 and "exit_index: int64[7]" in r.output
    r = cli("report", packed, "--baseline", model, "--no-latency")
    assert r.exit_code == 0 and "early exits" in r.output and "Conv_3" in r.output  # in a branch
    assert cli("unpack", packed, "-o", tmp_path / "back.onnx").exit_code == 0


def test_a_weight_pass_after_the_exits_is_refused(tmp_path, files):
    model, calib, _ = files
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\npass = "early_exit"\n[[steps]]\npass = "prune"\n')
    out = tmp_path / "o.onnx"
    r = cli("compress", model, "-o", out, "--recipe", recipe, "--calib", calib)
    assert r.exit_code == 2 and "must be the last pass" in r.output and not out.exists()


def _bad(tmp_path, *args):
    out = tmp_path / "never.onnx"
    r = cli("early-exit", *args, "-o", out)
    assert r.exit_code == 2, r.output
    assert not out.exists()
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_bad_inputs(tmp_path, files):
    model, calib, _ = files
    # not a classifier: its output is a feature map
    m = resnet()
    m.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("p0", 1, ["N", 8, 6, 6]))
    feat = tmp_path / "feat.onnx"
    onnx.save(m, str(feat))
    line = _bad(tmp_path, feat, "--calib", calib)
    assert str(feat) in line and "needs a classifier" in line and "'p0'" in line
    # no cut before the logits: a single Gemm
    gemm = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 144] input) => (float[N, 5] logits) { logits = Gemm (input, w, b) }""")
    gemm.graph.initializer.extend([onnx.numpy_helper.from_array(np.ones((144, 5), np.float32),
                                                                "w"),
                                   onnx.numpy_helper.from_array(np.zeros(5, np.float32), "b")])
    single = tmp_path / "gemm.onnx"
    onnx.save(gemm, str(single))
    flat = tmp_path / "flat.npz"
    np.savez(flat, input=images(600).reshape(600, -1))
    assert "no point to branch" in _bad(tmp_path, single, "--calib", flat)
    # too little calibration data
    few = tmp_path / "few.npz"
    np.savez(few, input=images(50))
    line = _bad(tmp_path, model, "--calib", few)
    assert "has 50 samples" in line and "at least 400" in line
    # an exit point inside the residual pair
    line = _bad(tmp_path, model, "--calib", calib, "--exits", "Relu_4")
    assert "'Relu_4' is not a valid exit point" in line
    # no calibration data at all
    assert "needs calibration data" in _bad(tmp_path, model)


def test_a_budget_no_threshold_meets_exits_3_with_the_model_unchanged(tmp_path, files):
    model, calib, evals = files
    out = tmp_path / "o.onnx"
    r = cli("early-exit", model, "-o", out, "--calib", calib, "--eval", evals,
            "--max-accuracy-drop", 0, "--no-latency")
    assert r.exit_code == 3 and "no setting meets the accuracy budget" in r.output
    written = onnx.load(str(out))
    assert [o.name for o in written.graph.output] == ["logits"]
    assert ExitTable.from_doc(written.graph.doc_string) is None


def test_exits_after_binarized_layers_are_given_what_the_binarization_left(tmp_path, files):
    """The budget left for the exits is measured on the model so far, XnorConv layers and all
    (the calibration sessions register the op)."""
    model, calib, _ = files
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\npass = "binarize"\nlayers = "all"\n'
                      '[[steps]]\npass = "early_exit"\n')
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    r = cli("compress", model, "-o", out, "--recipe", recipe, "--calib", calib,
            "--max-accuracy-drop", 100, "--json", report, "--no-latency")
    assert r.exit_code == 0, r.output
    notes = json.loads(report.read_text())["notes"]
    assert any(n.startswith("binarize:") and "binarized 4 layer(s)" in n for n in notes)
    (spent,) = [n for n in notes if n.startswith("early_exit: spent")]
    assert "earlier passes spent" in spent  # the binarized model's drop, measured
    assert "XnorConv" in out.read_bytes().decode("latin-1")  # in the exits' branches
