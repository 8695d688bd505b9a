"""The one private onnxruntime-extensions interface (runtime/ocos_hook.py): each thing it relies
on is checked here, so that an upgrade that changes one fails these tests loudly instead of
XnorConv silently falling back to the slow list marshalling."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxcompress.runtime
from onnxcompress import ops
from onnxcompress.runtime import custom_ops, ocos_hook


def test_the_private_api_is_still_there():
    from onnxruntime_extensions import _ocos

    assert callable(_ocos._on_pyop_invocation)
    assert callable(_ocos.PyCustomOpDef.install_hooker)
    custom_ops.register()
    xnor = [d for d in _ocos.Opdef._odlist.values() if d.op_type == ops.XNOR_CONV]
    assert len(xnor) == 1
    assert xnor[0]._nativedef.obj_id in ocos_hook._routes  # XnorConv's results go as arrays


def _probe_session(op_type: str) -> ort.InferenceSession:
    node = helper.make_node(op_type, ["x"], ["y"], domain=ops.DOMAIN)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, 1)])
    return ort.InferenceSession(model.SerializeToString(), onnxcompress.runtime.session_options())


def test_a_routed_op_returns_its_array_through_the_cpp_side():
    """The stock body (x * 0) would give zeros; the routed body's array (x * 2, with its shape)
    must come out, which shows the handler ran and the C++ side took a numpy array."""
    import onnxruntime_extensions as ox

    opdef = ox.onnx_op(op_type="OnnxcompressHookProbe", inputs=[ox.PyCustomOpDef.dt_float],
                       outputs=[ox.PyCustomOpDef.dt_float])(lambda x: x * 0)
    ocos_hook.route_to_array_results(opdef, lambda x: x * 2)
    try:
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(_probe_session("OnnxcompressHookProbe").run(None, {"x": x})[0],
                                      x * 2)
    finally:
        ocos_hook.unroute(opdef)


def test_a_changed_private_api_is_a_loud_error(monkeypatch):
    from onnxruntime_extensions import _ocos

    monkeypatch.delattr(_ocos, "_on_pyop_invocation")
    with pytest.raises(ocos_hook.HookUnavailable, match="_on_pyop_invocation"):
        ocos_hook.route_to_array_results(object(), lambda: None)


def test_registration_warns_when_the_hook_is_unavailable(monkeypatch):
    """Never silent: the op still works through the stock path, with a RuntimeWarning."""
    import onnxruntime_extensions as ox

    def unavailable(opdef, body):
        raise ocos_hook.HookUnavailable("changed")

    monkeypatch.setattr(custom_ops, "_registered", False)
    monkeypatch.setattr(ocos_hook, "route_to_array_results", unavailable)
    monkeypatch.setattr(ox, "onnx_op", lambda **kw: (lambda f: object()))  # no 2nd definition
    with pytest.warns(RuntimeWarning, match="list marshalling"):
        custom_ops.register()
