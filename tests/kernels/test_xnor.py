"""XnorConv kernels: every native path and the numpy reference run the same cases.

Mode "xnor" must match the reference bit for bit (D is an exact integer and the output is
float32(D) * alpha + bias on every side); mode "bwn" sums floats in another order, so it is
compared with a tolerance.  The portable ONNX form run by ONNX Runtime is checked the same way.
"""

from __future__ import annotations

import ctypes
import os
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxcompress import ops
from onnxcompress.kernels import xnor_native as xn
from onnxcompress.kernels.xnor_ref import pack_weights, unpack_weights, xnor_conv_ref

PATHS = xn.available_paths()

# n, c, h, w, m, kernel, strides, pads (top, left, bottom, right), dilations
CASES = {
    "1x1": (1, 7, 5, 6, 9, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    "3x3-c3-pad1": (1, 3, 7, 9, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3-c64": (1, 64, 12, 12, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3-c65-stride2-asym": (2, 65, 11, 10, 7, (3, 3), (2, 2), (1, 2, 0, 1), (1, 1)),
    "3x3-c130-odd-m": (1, 130, 9, 9, 13, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "5x5-dil2": (1, 63, 13, 13, 11, (5, 5), (1, 1), (2, 2, 2, 2), (2, 2)),
    "11x11-stride4": (2, 5, 30, 30, 3, (11, 11), (4, 4), (2, 3, 1, 0), (1, 1)),
    "3x3-pad-exceeds-kernel": (1, 3, 4, 4, 2, (3, 3), (1, 1), (3, 3, 3, 3), (1, 1)),
    "1x3-stride3-batch3": (3, 200, 6, 17, 33, (1, 3), (1, 3), (0, 1, 0, 1), (1, 1)),
    "3x3-wide-row": (1, 64, 3, 70, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
}


def make_case(name: str, seed: int = 0):
    n, c, h, w, m, ks, st, pd, dl = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    x[0, 0, 0, : min(3, w)] = 0.0  # exact zeros count as +1
    x[-1, -1, -1, -1] = -0.0
    packed, alpha = pack_weights(rng.normal(size=(m, c, *ks)))
    bias = rng.normal(size=m).astype(np.float32)
    attrs = {"kernel_shape": ks, "strides": st, "pads": pd, "dilations": dl}
    return x, packed, alpha, bias, attrs


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("threads", [1, 3])
def test_xnor_mode_is_bit_exact(path: str, name: str, threads: int):
    x, packed, alpha, bias, attrs = make_case(name)
    want = xnor_conv_ref(x, packed, alpha, bias, mode="xnor", **attrs)
    got = xn.xnor_conv(x, packed, alpha, bias, mode="xnor", threads=threads, path=path, **attrs)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("threads", [1, 3])
def test_sign_mode_is_bit_exact_with_many_zeros(path: str, name: str, threads: int):
    """Mode "sign" (ONNX Sign, 0 counts 0): inputs of -1/0/+1 as a Sign output gives them."""
    x, packed, alpha, bias, attrs = make_case(name)
    x = np.sign(np.round(x)).astype(np.float32)  # about a third exact zeros
    x[..., :1, :] = -0.0
    want = xnor_conv_ref(x, packed, alpha, bias, mode="sign", **attrs)
    got = xn.xnor_conv(x, packed, alpha, bias, mode="sign", threads=threads, path=path, **attrs)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["3x3-c65-stride2-asym", "5x5-dil2", "1x3-stride3-batch3"])
def test_sign_mode_without_zeros_runs_as_xnor_and_nan_counts_zero(path: str, name: str):
    """No input is 0 or NaN: Sign = sgn, so mode "sign" takes mode xnor's half-work path and
    must give its bits. One NaN (Sign counts it 0) sends it back to the exact two-plane path."""
    x, packed, alpha, bias, attrs = make_case(name)
    x[x == 0] = 0.25
    got = xn.xnor_conv(x, packed, alpha, bias, mode="sign", path=path, **attrs)
    np.testing.assert_array_equal(got, xn.xnor_conv(x, packed, alpha, bias, mode="xnor",
                                                    path=path, **attrs))
    np.testing.assert_array_equal(got, xnor_conv_ref(x, packed, alpha, bias, mode="sign", **attrs))
    x[0, 0, 1, 1] = np.nan  # inside some window for every geometry here
    got = xn.xnor_conv(x, packed, alpha, bias, mode="sign", path=path, **attrs)
    np.testing.assert_array_equal(got, xnor_conv_ref(x, packed, alpha, bias, mode="sign", **attrs))
    assert not np.array_equal(got, xn.xnor_conv(x, packed, alpha, bias, mode="xnor", path=path,
                                                **attrs))


def test_sign_mode_equals_float_conv_of_onnx_sign():
    """What the converter relies on: XnorConv(sign) = Conv(Sign(x), +-1) * alpha + B, and it
    differs from mode "xnor" exactly where an input is 0."""
    x, packed, alpha, bias, attrs = make_case("3x3-c3-pad1")
    x[0, 1, 2, :] = 0.0
    wpm1 = unpack_weights(packed, x.shape[1], attrs["kernel_shape"])
    conv = xnor_conv_ref(np.sign(x), pack_weights(wpm1)[0], np.ones_like(alpha), None,
                         mode="bwn", **attrs)
    want = conv * alpha.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)
    for path in PATHS:
        got = xn.xnor_conv(x, packed, alpha, bias, mode="sign", path=path, **attrs)
        np.testing.assert_array_equal(got, want)
    plus_one = xn.xnor_conv(x, packed, alpha, bias, mode="xnor", **attrs)
    assert not np.array_equal(plus_one, want)
    with pytest.raises(ValueError, match="unknown mode 'ternary'"):
        xn.xnor_conv(x, packed, alpha, bias, mode="ternary", **attrs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CASES))
def test_bwn_mode_matches_reference(path: str, name: str):
    x, packed, alpha, bias, attrs = make_case(name)
    want = xnor_conv_ref(x, packed, alpha, bias, mode="bwn", **attrs)
    got = xn.xnor_conv(x, packed, alpha, bias, mode="bwn", threads=2, path=path, **attrs)
    taps = x.shape[1] * attrs["kernel_shape"][0] * attrs["kernel_shape"][1]
    scale = float(np.abs(x).max() * alpha.max() * taps)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("path", PATHS)
def test_without_bias(path: str):
    x, packed, alpha, _, attrs = make_case("3x3-c65-stride2-asym")
    want = xnor_conv_ref(x, packed, alpha, None, **attrs)
    np.testing.assert_array_equal(xn.xnor_conv(x, packed, alpha, None, path=path, **attrs), want)


def test_reference_counts_zero_as_plus_one_and_padding_as_nothing():
    x = np.array([[[[0.0, -0.0], [-1.0, 2.0]]]], dtype=np.float32)  # 1x1x2x2
    packed, _ = pack_weights(np.ones((1, 1, 3, 3), dtype=np.float32))
    alpha = np.ones(1, dtype=np.float32)
    y = xnor_conv_ref(x, packed, alpha, None, kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    # every output sees all four pixels: +1 +1 -1 +1 = 2; the padded taps add nothing
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 2.0, dtype=np.float32))
    for path in PATHS:
        got = xn.xnor_conv(
            x, packed, alpha, None, kernel_shape=(3, 3), pads=(1, 1, 1, 1), path=path
        )
        np.testing.assert_array_equal(got, y)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["xnor", "bwn", "sign"])
def test_prepared_weights_are_reusable(path: str, mode: str):
    x, packed, alpha, bias, attrs = make_case("3x3-c130-odd-m")
    prepared = xn.prepare_weights(packed, x.shape[1], attrs["kernel_shape"], mode=mode, path=path)
    for scale in (1.0, -0.5):
        want = xn.xnor_conv(x * scale, packed, alpha, bias, mode=mode, path=path, **attrs)
        got = xn.xnor_conv(x * scale, prepared, alpha, bias, mode=mode, threads=2, **attrs)
        np.testing.assert_array_equal(got, want)


def test_prepared_weights_reject_another_shape():
    x, packed, alpha, bias, attrs = make_case("3x3-c64")
    prepared = xn.prepare_weights(packed, 64, (3, 3))
    with pytest.raises(ValueError, match="prepared for C=64"):
        xn.xnor_conv(x[:, :32], prepared, alpha, bias, **attrs)
    with pytest.raises(ValueError, match="mode='xnor'"):
        xn.xnor_conv(x, prepared, alpha, bias, mode="bwn", **attrs)


def test_padding_bits_of_packed_weights_are_ignored():
    x, packed, alpha, bias, attrs = make_case("3x3-c65-stride2-asym")
    dirty = packed.copy().reshape(packed.shape[0], 9, 2, 8)
    dirty[:, :, 1, 1:] = 0xFF  # channels 73..127 do not exist (C = 65)
    want = xnor_conv_ref(x, packed, alpha, bias, **attrs)
    for path in PATHS:
        got = xn.xnor_conv(x, dirty.reshape(packed.shape), alpha, bias, path=path, **attrs)
        np.testing.assert_array_equal(got, want)


def test_pack_weights_layout():
    w = np.full((2, 70, 1, 2), -1.0, dtype=np.float32)
    w[0, 0, 0, 0] = w[0, 65, 0, 0] = w[1, 3, 0, 1] = 0.0  # 0 counts as +1
    packed, alpha = pack_weights(w)
    assert packed.dtype == np.uint8
    assert packed.shape == (2, ops.packed_row_bytes(70, (1, 2))) == (2, 2 * 2 * 8)
    words = packed.view(np.uint64).reshape(2, 2, 2)  # [m][tap][word], little-endian
    assert words[0, 0, 0] == 1 and words[0, 0, 1] == 1 << 1
    assert words[1, 1, 0] == 1 << 3 and words[1, 0].sum() == 0
    np.testing.assert_allclose(alpha, [(140 - 2) / 140, (140 - 1) / 140], rtol=1e-6)
    np.testing.assert_array_equal(unpack_weights(packed, 70, (1, 2)), np.where(w >= 0, 1, -1))
    as_words = xn.xnor_conv(
        np.ones((1, 70, 1, 2), np.float32), packed.view(np.uint64), alpha, None, kernel_shape=(1, 2)
    )
    np.testing.assert_array_equal(
        as_words,
        xnor_conv_ref(np.ones((1, 70, 1, 2), np.float32), packed, alpha, None, kernel_shape=(1, 2)),
    )


def test_group_above_one_is_a_clear_error():
    x, packed, alpha, bias, attrs = make_case("3x3-c64")
    with pytest.raises(ValueError, match="group=1 only, got group=2"):
        xn.xnor_conv(x, packed, alpha, bias, group=2, **attrs)


def test_bad_shapes_are_clear_errors():
    x, packed, alpha, bias, attrs = make_case("3x3-c64")
    with pytest.raises(ValueError, match=r"expected \[M, 72\]"):
        xn.xnor_conv(x, packed[:, :-8], alpha, bias, **attrs)
    with pytest.raises(ValueError, match="alpha has 3 values, expected M=16"):
        xn.xnor_conv(x, packed, alpha[:3], bias, **attrs)
    with pytest.raises(ValueError, match="exceeds the padded input size"):
        xn.xnor_conv(x[:, :, :1, :1], packed, alpha, bias, kernel_shape=(3, 3))
    with pytest.raises(ValueError, match="unknown XnorConv path"):
        xn.xnor_conv(x, packed, alpha, bias, path="sse9", **attrs)


class _WithoutPath:
    """The real library, but claiming that only the portable path exists."""

    def __init__(self, lib):
        self._lib = lib

    def xnor_path_supported(self, path: int) -> int:
        return int(path == 0)

    def __getattr__(self, name: str):
        return getattr(self._lib, name)


def test_unsupported_path_warns_and_runs_portable(monkeypatch):
    real = xn.library()
    if real is None:
        pytest.skip("native library not built")
    monkeypatch.setattr(xn, "library", lambda: _WithoutPath(real))
    x, packed, alpha, bias, attrs = make_case("3x3-c64")
    with pytest.warns(RuntimeWarning, match="not supported on this CPU; using 'portable'"):
        got = xn.xnor_conv(x, packed, alpha, bias, path="avx512", **attrs)
    np.testing.assert_array_equal(got, xnor_conv_ref(x, packed, alpha, bias, **attrs))


def test_missing_library_warns_and_runs_the_reference(monkeypatch):
    monkeypatch.setattr(xn, "_find_library", lambda: None)
    xn.library.cache_clear()
    try:
        x, packed, alpha, bias, attrs = make_case("3x3-c3-pad1")
        with pytest.warns(RuntimeWarning, match="numpy reference"):
            got = xn.xnor_conv(x, packed, alpha, bias, **attrs)
        np.testing.assert_array_equal(got, xnor_conv_ref(x, packed, alpha, bias, **attrs))
        assert xn.available_paths() == ["reference"]
    finally:
        xn.library.cache_clear()


def test_unloadable_library_warns_and_runs_the_reference(monkeypatch, tmp_path):
    bogus = tmp_path / "_xnor.so"
    bogus.write_bytes(b"not a shared library")
    monkeypatch.setattr(xn, "_find_library", lambda: bogus)
    xn.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not load"):
            assert xn.best_path() == "reference"
    finally:
        xn.library.cache_clear()


def portable_form(x: np.ndarray, packed, alpha, bias, mode: str, attrs: dict) -> onnx.ModelProto:
    """The standard-ONNX graph that ops.py documents for XnorConv."""
    n, c, h, w = x.shape
    m = packed.shape[0]
    oh, ow = ops.conv_output_hw(
        (h, w), attrs["kernel_shape"], attrs["strides"], attrs["pads"], attrs["dilations"]
    )
    conv_attrs = ", ".join(f"{k} = {list(v)}" for k, v in attrs.items())
    sign = (
        "ge = GreaterOrEqual (X, zero)\n xs = Where (ge, one, neg)"
        if mode == "xnor"
        else ("xs = Identity (X)")
    )
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    portable (float[{n}, {c}, {h}, {w}] X) => (float[{n}, {m}, {oh}, {ow}] Y) {{
        zero = Constant <value = float {{0.0}}> ()
        one = Constant <value = float {{1.0}}> ()
        neg = Constant <value = float {{-1.0}}> ()
        {sign}
        cv = Conv <{conv_attrs}> (xs, W)
        sc = Mul (cv, alpha)
        Y = Add (sc, B)
    }}"""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(unpack_weights(packed, c, attrs["kernel_shape"]), "W"),
            numpy_helper.from_array(alpha.reshape(1, m, 1, 1), "alpha"),
            numpy_helper.from_array(bias.reshape(1, m, 1, 1), "B"),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def run_ort(model: onnx.ModelProto, x: np.ndarray, optimize: bool) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


@pytest.mark.parametrize(
    "name",
    [
        "3x3-c65-stride2-asym",
        "5x5-dil2",
        "11x11-stride4",
        "3x3-pad-exceeds-kernel",
        "1x3-stride3-batch3",
    ],
)
def test_portable_onnx_form_agrees(name: str):
    x, packed, alpha, bias, attrs = make_case(name)
    native = xn.xnor_conv(x, packed, alpha, bias, mode="xnor", **attrs)
    model = portable_form(x, packed, alpha, bias, "xnor", attrs)
    np.testing.assert_array_equal(run_ort(model, x, optimize=False), native)
    # ORT's ConvMulFusion/ConvAddFusion fold alpha and B into W: equal up to float rounding
    np.testing.assert_allclose(run_ort(model, x, optimize=True), native, rtol=1e-5, atol=1e-4)
    bwn = portable_form(x, packed, alpha, bias, "bwn", attrs)
    np.testing.assert_allclose(
        run_ort(bwn, x, optimize=False),
        xn.xnor_conv(x, packed, alpha, bias, mode="bwn", **attrs),
        rtol=1e-5,
        atol=1e-4,
    )


def test_concurrent_calls_from_python_threads():
    """ctypes.CDLL drops the GIL during the call; concurrent calls share no state."""
    import threading

    x, packed, alpha, bias, attrs = make_case("3x3-c64")
    outs = []

    def work() -> None:
        outs.append(xn.xnor_conv(x, packed, alpha, bias, **attrs))

    threads = [threading.Thread(target=work) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(outs) == 2 and np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("path", PATHS)
def test_out_buffer_receives_the_result(path: str):
    x, packed, alpha, bias, attrs = make_case("3x3-c64")
    out = np.full((1, 16, 12, 12), np.nan, dtype=np.float32)
    got = xn.xnor_conv(x, packed, alpha, bias, path=path, out=out, **attrs)
    assert got is out
    np.testing.assert_array_equal(out, xnor_conv_ref(x, packed, alpha, bias, **attrs))
    with pytest.raises(ValueError, match="out must be a C-contiguous float32 array"):
        xn.xnor_conv(x, packed, alpha, bias, path=path, out=out[:, :8], **attrs)


def test_kernels_are_memory_safe_under_sanitizers(tmp_path):
    """Random geometries on every path and mode in an ASan/UBSan build (csrc/xnor/test)."""
    import shutil
    import subprocess
    from pathlib import Path

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    src = Path(__file__).resolve().parents[2] / "csrc" / "xnor"
    sources = [*sorted(src.glob("*.c")), src / "test" / "xnor_fuzz.c"]
    exe = tmp_path / "xnor_fuzz"
    flags = [
        "-O1",
        "-g",
        "-std=c11",
        "-ffp-contract=off",
        "-pthread",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
    ]
    built = subprocess.run(
        [cc, *flags, f"-I{src}", *map(str, sources), "-o", str(exe)],
        check=False,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"sanitizer build unavailable: {built.stderr[-300:]}")
    ran = subprocess.run(
        [str(exe), "150", "7"], check=False, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr[-2000:]
    assert ran.stdout.startswith("ok ")


def _big_case():
    """Enough work (> 20 M bit-MACs) that two threads really use the worker pool."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(1, 128, 40, 40)).astype(np.float32)
    packed, alpha = pack_weights(rng.normal(size=(64, 128, 3, 3)))
    attrs = {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1)}
    return x, packed, alpha, attrs


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_worker_pool_survives_fork():
    """A child forked after the pool started must not wait for workers it does not have."""
    x, packed, alpha, attrs = _big_case()
    want = xnor_conv_ref(x, packed, alpha, None, **attrs)
    np.testing.assert_array_equal(xn.xnor_conv(x, packed, alpha, None, threads=2, **attrs), want)
    pid = os.fork()
    if pid == 0:  # child: any failure or hang becomes a non-zero status
        try:
            got = xn.xnor_conv(x, packed, alpha, None, threads=2, **attrs)
            os._exit(0 if np.array_equal(got, want) else 3)
        except BaseException:  # noqa: BLE001 (the child must exit, whatever happened)
            os._exit(4)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("the forked child hung in the worker pool")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0


def test_many_threads_share_the_pool_and_agree():
    """Calls from several Python threads at once (ctypes drops the GIL): one uses the pool,
    the others run their shares themselves; every result is exact."""
    import threading

    x, packed, alpha, attrs = _big_case()
    want = xnor_conv_ref(x, packed, alpha, None, **attrs)
    prepared = xn.prepare_weights(packed, x.shape[1], attrs["kernel_shape"])
    bad = []

    def work():
        for _ in range(5):
            got = xn.xnor_conv(x, prepared, alpha, None, threads=3, **attrs)
            if not np.array_equal(got, want):
                bad.append(True)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"strides": (2**32 + 1, 1)}, r"strides \[4294967297, 1\] holds 4294967297, outside"),
        ({"strides": (0, 1)}, "strides .* holds 0, outside 1..2147483647"),
        ({"dilations": (1, -2)}, "dilations .* holds -2"),
        ({"pads": (0, 0, 0, -1)}, "pads .* holds -1, outside 0.."),
        ({"pads": (2**31, 0, 0, 0)}, "pads .* holds 2147483648"),
        ({"pads": (1, 1)}, "pads needs 4 values"),
        ({"kernel_shape": (3, 3, 3)}, "kernel_shape needs 2 values"),
        ({"strides": (1.5, 1)}, "strides must be integers"),
        ({"group": 2}, "group=1 only"),
        ({"mode": "xor"}, "unknown mode 'xor'"),
        ({"threads": 0}, "threads must be an integer >= 1"),
    ],
)
def test_every_attribute_is_checked_before_the_kernel(path: str, attrs: dict, message: str):
    """Values the C kernel would truncate to int32 (a stride of 2**32 + 1 became 1 there while
    the output was sized from the full value: heap corruption) are refused on every path."""
    x, packed, alpha, bias, base = make_case("3x3-c3-pad1")
    with pytest.raises(ValueError, match=message):
        xn.xnor_conv(x, packed, alpha, bias, path=path, **{**base, **attrs})


def test_huge_thread_counts_are_clamped_not_truncated():
    x, packed, alpha, bias, attrs = make_case("3x3-c64")
    got = xn.xnor_conv(x, packed, alpha, bias, threads=2**32 + 1, **attrs)
    np.testing.assert_array_equal(got, xnor_conv_ref(x, packed, alpha, bias, **attrs))


def test_the_c_kernel_refuses_buffers_smaller_than_its_geometry():
    """The C side's own guard: a caller whose idea of the shapes differs from the geometry gets
    XNOR_EARG (-1) before anything is read or written."""
    lib = xn.library()
    if lib is None:
        pytest.skip("native library not built")
    x, packed, alpha, _, attrs = make_case("3x3-c3-pad1")
    geom, shape = xn._geometry(x.shape, packed.shape[0], (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    y = np.zeros(shape, np.float32)
    words = packed.nbytes // 8
    args = (x.ctypes.data, x.size, packed.ctypes.data, words, alpha.ctypes.data, None,
            y.ctypes.data)
    for x_len, w_words, y_len in [(x.size - 1, words, y.size), (x.size, words - 1, y.size),
                                  (x.size, words, y.size - 1)]:
        rc = lib.xnor_conv2d(ctypes.byref(geom), 0, args[0], x_len, args[2], w_words, args[4],
                             None, args[6], y_len, 1, 0, None)
        assert rc == -1
    assert not y.any()
    rc = lib.xnor_conv2d(ctypes.byref(geom), 0, args[0], x.size, args[2], words, args[4], None,
                         args[6], y.size, 1, 0, None)
    assert rc == 0
    np.testing.assert_array_equal(y, xnor_conv_ref(x, packed, alpha, None, **attrs))


def test_conv_attrs_strings_are_checked_like_the_lists():
    ok = ops.decode_conv_attrs(" kernel_shape = 3,3 ; strides=2,2")
    assert ok[ops.ATTR_STRIDES] == (2, 2)
    for text, message in [
        ("kernel_shape=3,3;strides=4294967297,1", "outside 1..2147483647"),
        ("kernel_shape=3,3;group=2", "group=1 only"),
        ("kernel_shape=3,3;group=1,1", "group needs 1 value"),
        ("kernel_shape=3,x", "not a list of integers"),
        ("kernel_shape=3,3;kernel_shape=5,5", "repeated conv_attrs entry"),
        ("strides=1,1", "lacks kernel_shape"),
        ("kernel_shape=" + "9" * 5000, "not a list of integers"),
    ]:
        with pytest.raises(ValueError, match=message):
            ops.decode_conv_attrs(text)
    with pytest.raises(ValueError, match="unknown mode"):
        ops.decode_op_attrs("XNOR", "kernel_shape=1,1")
