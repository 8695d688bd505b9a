"""The command line end to end on a tiny model: outputs, reports, exit codes, error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnxcompress.cli.main import main

from onnxcompress.runtime import Session
from tests.conftest import tiny_data

COMMANDS = ["compress", "prune", "cluster", "pack", "unpack", "run", "report"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    r = cli(command, "--help")
    assert r.exit_code == 0
    assert "Example" in r.output and f"onnxcompress {command}" in r.output


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "onnxcompress", "--help"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and "compress" in r.stdout


def _ort(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]


def test_prune_cluster_pack_run_unpack(tmp_path, tiny_model_path):
    pruned, clustered = tmp_path / "p.onnx", tmp_path / "c.onnx"
    packed, plain = tmp_path / "c.onnxc", tmp_path / "plain.onnx"
    assert cli("prune", tiny_model_path, "-o", pruned, "--sparsity", 0.8,
               "--no-latency").exit_code == 0
    w = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(pruned)).graph.initializer
         if t.dims and len(t.dims) >= 2]
    assert w and all(abs((a == 0).mean() - 0.8) < 0.05 for a in w)
    assert cli("cluster", pruned, "-o", clustered, "--bits", 5, "--no-latency").exit_code == 0
    r = cli("pack", clustered, "-o", packed)
    assert r.exit_code == 0 and packed.stat().st_size < clustered.stat().st_size
    x = tiny_data()["input"]
    np.save(tmp_path / "x.npy", x)
    r = cli("run", packed, "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert r.exit_code == 0 and "top-1" in r.output
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["logits"], _ort(clustered, x))
    assert cli("unpack", packed, "-o", plain).exit_code == 0
    a, b = onnx.load(str(plain)), onnx.load(str(clustered))
    ia = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ia.keys() == ib.keys()
    for k, v in ia.items():
        assert v.tobytes() == ib[k].tobytes(), k


def test_compress_writes_container_report_and_json(tmp_path, tiny_model_path, tiny_data_path):
    out, js = tmp_path / "small.onnxc", tmp_path / "r.json"
    r = cli("compress", tiny_model_path, "-o", out, "--calib", tiny_data_path, "--eval",
            tiny_data_path, "--max-accuracy-drop", 100, "--json", js, "--recipe",
            "deep-compression")
    assert r.exit_code == 0, r.output
    rep = json.loads(js.read_text())
    assert [s["stage"] for s in rep["stages"]] == ["original", "pruned", "clustered", "packed"]
    assert rep["within_budget"] is True and rep["layers"]
    assert set(rep["latency_ms"]) == {"original", "packed"}
    assert "top-1 %" in r.output
    # what each pass did reaches the JSON: the sensitivity curve each layer was cut from
    prune_rep, cluster_rep = rep["passes"]
    assert prune_rep["pass"] == "prune" and cluster_rep["pass"] == "cluster"
    scans = [f["scan"] for f in prune_rep["per_tensor"].values() if "scan" in f]
    assert scans and all(isinstance(d, float) for scan in scans for d in scan.values())
    assert all(f["bits"] in (5, 8) for f in cluster_rep["per_tensor"].values())
    assert all(row["flops"] > 0 for row in rep["layers"])
    x = tiny_data()["input"]
    got = Session(out).run(None, {"input": x})[0]
    assert got.shape == (64, 4)


def test_the_default_searches_within_the_budget(tmp_path, tiny_model_path, tiny_data_path):
    out, js = tmp_path / "small.onnxc", tmp_path / "r.json"
    r = cli("compress", tiny_model_path, "-o", out, "--calib", tiny_data_path, "--eval",
            tiny_data_path, "--max-accuracy-drop", 10, "--json", js, "--no-latency")
    assert r.exit_code == 0, r.output
    rep = json.loads(js.read_text())
    assert rep["within_budget"] and rep["accuracy_drop"] <= 10
    assert "budget search" in r.output
    for layer, facts in rep["search"]["layers"].items():  # every layer's curves and its setting
        assert facts["prune_curve"]["0"] == [0.0, 0.0] and "8" in facts["cluster_curve"], layer
        assert facts["chosen"].startswith("s=")
    assert rep["stages"][-1]["ratio"] > 2


def test_budget_exceeded_exits_3_and_still_writes(tmp_path, tiny_model_path, tiny_data_path):
    out, js = tmp_path / "small.onnxc", tmp_path / "r.json"
    recipe = tmp_path / "harsh.toml"
    recipe.write_text('[[steps]]\npass = "prune"\nmode = "uniform"\nsparsity = 0.99\n'
                      '[[steps]]\npass = "cluster"\nbits_conv = 1\nbits_fc = 1\n')
    r = cli("compress", tiny_model_path, "-o", out, "--recipe", recipe, "--eval", tiny_data_path,
            "--max-accuracy-drop", 0.0, "--json", js, "--no-latency")
    assert r.exit_code == 3, r.output
    assert out.exists() and json.loads(js.read_text())["within_budget"] is False


# ---------------------------------------------------------------- bad input: exit 2, one line


def _bad(r, *needles):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in r.output, r.output


def test_not_onnx(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"\x00\x01 hello")
    _bad(cli("prune", p, "-o", tmp_path / "o.onnx"), "not an ONNX model")
    assert not (tmp_path / "o.onnx").exists()


def test_truncated_model(tmp_path, tiny_model_path):
    p = tmp_path / "cut.onnx"
    data = tiny_model_path.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    _bad(cli("compress", p, "-o", tmp_path / "o.onnxc"), str(p))
    assert not (tmp_path / "o.onnxc").exists()


def test_no_prunable_layer(tmp_path):
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] input) => (float[N, 4] y) { y = Relu (input) }""")
    p = tmp_path / "relu.onnx"
    onnx.save(m, str(p))
    _bad(cli("prune", p, "-o", tmp_path / "o.onnx"), "no prunable layer")


def test_unknown_recipe_key_lists_valid_ones(tmp_path, tiny_model_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - pass: prune\n    sparsty: 0.5\n")
    _bad(cli("compress", tiny_model_path, "--recipe", recipe, "-o", tmp_path / "o.onnxc"),
         "sparsty", "valid keys", "sparsity")
    recipe.write_text("steps:\n  - pass: quantize\n")
    _bad(cli("compress", tiny_model_path, "--recipe", recipe, "-o", tmp_path / "o.onnxc"),
         "unknown pass 'quantize'", "prune", "cluster")


def test_npz_missing_input_or_wrong_shape(tmp_path, tiny_model_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((2, 1, 8, 8), np.float32))
    _bad(cli("compress", tiny_model_path, "--calib", bad, "-o", tmp_path / "o.onnxc"),
         "missing input", "input")
    np.savez(bad, input=np.zeros((2, 1, 7, 8), np.float32))
    _bad(cli("compress", tiny_model_path, "--eval", bad, "-o", tmp_path / "o.onnxc"),
         "axis 2 must be 8")
    np.savez(bad, input=np.zeros((2, 1, 8, 8), np.float16))
    _bad(cli("run", tiny_model_path, "--input", bad), "expected dtype float32")


def test_corrupted_container_names_the_section(tmp_path, tiny_model_path):
    packed = tmp_path / "m.onnxc"
    assert cli("pack", tiny_model_path, "-o", packed).exit_code == 0
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.onnxc"
    bad.write_bytes(bytes(data))
    r = cli("unpack", bad, "-o", tmp_path / "o.onnx")
    _bad(r, "corrupted", "CRC")
    assert not (tmp_path / "o.onnx").exists()
    trunc = tmp_path / "trunc.onnxc"
    trunc.write_bytes(bytes(data[: len(data) // 3]))
    _bad(cli("run", trunc, "--input", tmp_path / "none.npy"))


def test_refuses_to_overwrite_input(tiny_model_path):
    _bad(cli("prune", tiny_model_path, "-o", tiny_model_path), "overwrite an input")


def test_dynamic_batch_runs_any_batch(tmp_path, tiny_model_path):
    out = tmp_path / "p.onnx"
    assert cli("prune", tiny_model_path, "-o", out, "--sparsity", 0.5,
               "--no-latency").exit_code == 0
    for n in (1, 5):
        assert Session(out).run(None, {"input": np.zeros((n, 1, 8, 8), np.float32)})[0].shape == (n, 4)


def _fix_batch(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = size
    return model


def test_a_fixed_batch_model_runs_in_batches_of_its_size(tmp_path, tiny_model_path):
    """As compress scores it: 8 samples through a batch-2 model are 4 runs, joined."""
    fixed = tmp_path / "fixed.onnx"
    onnx.save(_fix_batch(onnx.load(str(tiny_model_path)), 2), str(fixed))
    x = tiny_data(8)["input"]
    np.save(tmp_path / "x.npy", x)
    r = cli("run", fixed, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npz")
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["logits"], _ort(tiny_model_path, x),
                               rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "x7.npy", x[:7])
    _bad(cli("run", fixed, "--input", tmp_path / "x7.npy"), str(tmp_path / "x7.npy"),
         "batches of exactly 2 samples")


def test_a_fixed_batch_output_that_does_not_follow_the_batch_is_not_joined(tmp_path):
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y, float[3] mean) {
        y = Relu (x)
        mean = ReduceMean <axes = [0], keepdims = 0> (x)
    }""")
    onnx.save(m, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", np.ones((4, 3), np.float32))
    r = cli("run", tmp_path / "m.onnx", "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npz")
    _bad(r, str(tmp_path / "m.onnx"), "output 'mean' [3] does not follow the batch",
         "give 2 samples at a time")
    assert not (tmp_path / "y.npz").exists()
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))  # one batch: nothing to join
    assert cli("run", tmp_path / "m.onnx", "--input", tmp_path / "x.npy").exit_code == 0


def test_unknown_ops_are_left_untouched_and_listed(tmp_path):
    rng = np.random.default_rng(0)
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 6] input) => (float[N, 3] y) {
        h = Gemm <transB = 1> (input, w, b)
        s = Softplus (h)
        y = Hardmax (s)
    }""")
    m.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.normal(size=(3, 6)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b")])
    p, out, js = tmp_path / "u.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(m, str(p))
    r = cli("prune", p, "-o", out, "--sparsity", 0.5, "--json", js, "--no-latency")
    assert r.exit_code == 0, r.output
    assert json.loads(js.read_text())["unknown_ops"] == ["Hardmax", "Softplus"]
    assert "Hardmax, Softplus" in r.output
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops == ["Gemm", "Softplus", "Hardmax"]


def test_report_against_baseline(tmp_path, tiny_model_path, tiny_data_path):
    packed, js = tmp_path / "m.onnxc", tmp_path / "r.json"
    assert cli("prune", tiny_model_path, "-o", packed, "--sparsity", 0.7,
               "--no-latency").exit_code == 0
    r = cli("report", packed, "--baseline", tiny_model_path, "--eval", tiny_data_path,
            "--json", js)
    assert r.exit_code == 0, r.output
    rep = json.loads(js.read_text())
    base, model = rep["stages"]
    assert base["stage"] == "baseline" and model["stage"] == "model"
    assert model["ratio"] == pytest.approx(base["bytes"] / model["bytes"])
    assert model["bytes"] == packed.stat().st_size
    assert set(rep["latency_ms"]) == {"baseline", "model"}
    # sizes and codecs come from the container's section table (nothing is re-encoded)
    assert {row["stored_as"] for row in rep["layers"]} <= {"sparse", "codebook", "sparse_rans",
                                                          "codebook_rans", "zlib", "lzma", "stored"}
    assert "entropy coding" not in r.output  # coding statistics belong to the run that wrote it
    sparsity = {row["layer"]: row["sparsity"] for row in rep["layers"]}
    assert sparsity and all(abs(s - 0.7) < 0.05 for s in sparsity.values())
    assert all(row["bytes_after"] < row["bytes_before"] for row in rep["layers"])


def test_report_has_no_huffman_line_when_nothing_is_huffman_coded(tmp_path, tiny_model_path):
    packed = tmp_path / "raw.onnxc"
    assert cli("pack", tiny_model_path, "-o", packed).exit_code == 0  # dense floats: raw codecs
    r = cli("report", packed, "--no-latency")
    assert r.exit_code == 0, r.output
    assert "entropy coding" not in r.output
