"""Session: per-session XnorConv state, the thread bound, one-line errors, container bytes.

Paths that would end the process if the fix regressed (an exception escaping the op into
onnxruntime-extensions) run in a child process: tests/robustness/test_xnor_attrs.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxcompress.runtime
from onnxcompress import ops
from onnxcompress.container import container_bytes
from onnxcompress.errors import BadInputError, SessionError
from onnxcompress.kernels import xnor_native
from onnxcompress.kernels.xnor_ref import pack_weights
from onnxcompress.runtime import MAX_THREADS_PER_CPU, Session, custom_ops, max_threads
from onnxcompress.runtime.run_context import OpState, current, run_scope
from onnxcompress.runtime.threads import cpu_count


def xnor_model(conv_attrs: str = "kernel_shape=3,3", mode: str = "xnor", c: int = 5, m: int = 4,
               then_relu: bool = True) -> onnx.ModelProto:
    """One XnorConv (optionally followed by a Relu), input [N, C, H, W] with symbolic dims."""
    rng = np.random.default_rng(0)
    bits, alpha = pack_weights(rng.normal(size=(m, c, 3, 3)))
    inits = [onnx.numpy_helper.from_array(bits, "wb"), onnx.numpy_helper.from_array(alpha, "al"),
             onnx.numpy_helper.from_array(np.zeros(m, np.float32), "b")]
    nodes = [helper.make_node(ops.XNOR_CONV, ["x", "wb", "al", "b"], ["c" if then_relu else "y"],
                              name="xc", domain=ops.DOMAIN, mode=mode, conv_attrs=conv_attrs)]
    if then_relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(ops.DOMAIN, 1)])


X = np.random.default_rng(1).normal(size=(1, 5, 8, 8)).astype(np.float32)


def test_thread_bound_is_documented_and_enforced():
    assert max_threads() == MAX_THREADS_PER_CPU * cpu_count()
    data = xnor_model().SerializeToString()
    for bad in (0, -1, max_threads() + 1, 3000, "2", 2.0):
        with pytest.raises(BadInputError, match="threads"):
            Session(data, threads=bad)
    with pytest.raises(BadInputError, match=rf"outside 1..{max_threads()}"):
        onnxcompress.runtime.session_options(threads=3000)
    assert Session(data, threads=max_threads()).run(None, {"x": X})[0].shape == (1, 4, 6, 6)


def test_each_session_runs_xnorconv_with_its_own_threads(monkeypatch):
    """No process-wide setting: a second Session cannot change the first one's threads, and a
    plain onnxruntime session uses the default."""
    seen = []
    real = xnor_native.xnor_conv

    def spy(*args, **kwargs):
        seen.append(kwargs["threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr(xnor_native, "xnor_conv", spy)
    data = xnor_model().SerializeToString()
    one, two = Session(data, threads=1), Session(data, threads=2)
    one.run(None, {"x": X})
    two.run(None, {"x": X})
    one.run(None, {"x": X})
    plain = ort.InferenceSession(data, onnxcompress.runtime.session_options(threads=1))
    plain.run(None, {"x": X})
    assert seen == [1, 2, 1, min(cpu_count(), xnor_native.KERNEL_MAX_THREADS)]
    assert Session(data)._ops.threads == cpu_count()


def test_the_run_scope_is_per_call_and_gone_afterwards():
    ro = ort.RunOptions()
    with run_scope(OpState(threads=3), ro) as scope:
        assert current() is scope
    assert current() is None


def test_op_failure_is_recorded_in_the_scope_and_returns_an_empty_output():
    """The op body itself never raises: the exception goes to the run's scope, which stops the
    run (RunOptions.terminate) for Session.run to re-raise."""
    ro = ort.RunOptions()
    bits, alpha = pack_weights(np.ones((4, 5, 3, 3), np.float32))
    with run_scope(OpState(threads=1), ro) as scope:
        out = custom_ops._xnor_conv_op(X, bits, alpha, np.zeros(4, np.float32), mode="xnor",
                                       conv_attrs="kernel_shape=3,3;strides=0,1")
    assert out.size == 0
    assert isinstance(scope.error, ValueError) and "strides" in str(scope.error)
    assert ro.terminate


def test_op_failure_under_a_plain_session_warns_and_returns_empty():
    bits, alpha = pack_weights(np.ones((4, 5, 3, 3), np.float32))
    with pytest.warns(RuntimeWarning, match="XnorConv failed and returned an empty output"):
        out = custom_ops._xnor_conv_op(X, bits, alpha, np.zeros(4, np.float32), mode="bad",
                                       conv_attrs="kernel_shape=3,3")
    assert out.size == 0


@pytest.mark.parametrize("then_relu", [True, False])  # the failing op last, or before a node
def test_run_time_op_errors_surface_from_session_run(then_relu: bool):
    """Inputs the op refuses (a 2x2 image under a 3x3 kernel) are a SessionError naming the
    model, the caller's RunOptions stay usable, and the session still runs good inputs."""
    sess = Session(xnor_model(then_relu=then_relu).SerializeToString())
    ro = ort.RunOptions()
    with pytest.raises(SessionError, match="model bytes: XnorConv: kernel span 3 exceeds") as e:
        sess.run(None, {"x": X[:, :, :2, :2]}, ro)
    assert isinstance(e.value.__cause__, ValueError)
    assert not ro.terminate
    assert sess.run(None, {"x": X}, ro)[0].shape == (1, 4, 6, 6)


def test_interrupts_in_the_op_reach_the_caller(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(custom_ops, "_compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Session(xnor_model().SerializeToString()).run(None, {"x": X})


def test_onnx_runtime_errors_are_one_short_line_with_the_full_text_kept(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(xnor_model(), str(path))
    sess = Session(path)
    with pytest.raises(SessionError) as e:
        sess.run(None, {"x": X[0]})  # rank 3 for a rank-4 input
    msg = str(e.value)
    assert msg.startswith(f"{path}: ONNX Runtime cannot run the model: ")
    assert "\n" not in msg and "[ONNXRuntimeError]" not in msg and len(msg) < 400
    assert "[ONNXRuntimeError]" in e.value.detail
    assert isinstance(e.value.__cause__, Exception)
    with pytest.raises(SessionError, match="missing from input feed"):
        sess.run(None, {"other": X})


def test_load_errors_name_the_users_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage that is no model")
    with pytest.raises(BadInputError, match=f"^{path}: ") as e:
        Session(path)
    assert "\n" not in str(e.value)
    with pytest.raises(BadInputError, match="no such file"):
        Session(tmp_path / "missing.onnx")
    with pytest.raises(BadInputError, match="file path or model bytes, got int"):
        Session(3)


def test_container_bytes_are_recognized(tmp_path):
    model = xnor_model()
    want = Session(model.SerializeToString()).run(None, {"x": X})[0]
    data = container_bytes(model)
    np.testing.assert_array_equal(Session(data).run(None, {"x": X})[0], want)
    np.testing.assert_array_equal(Session(bytearray(data)).run(None, {"x": X})[0], want)
    with pytest.raises(BadInputError, match="^container bytes: "):
        Session(data[:-1])
