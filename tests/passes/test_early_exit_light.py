"""Every classifier topology among the onnx wheel's light models gets exits from synthetic
calibration data and runs in ONNX Runtime at batch 1 and 7 with the original output shapes;
a sample that goes to the end gets exactly the original outputs.

The weights are materialized as models/materialize.py does. AlexNet, ZFNet-512 and VGG-19 hold
60-140 M parameters, nearly all in two hidden fully connected layers: those two are narrowed to
64 units first (every node, kernel, stride and the 1000-class output stay), so that the test
costs seconds, not minutes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from models import materialize
from onnxcompress.graph import to_graph, to_model
from onnxcompress.normalize import normalize
from onnxcompress.passes import early_exit
from tests.helpers import calib_context

LIGHT = sorted(p.name for p in materialize.light_dir().glob("light_*.onnx"))
HIDDEN = 64


def _narrow_fc(model: onnx.ModelProto) -> None:
    """Hidden Gemm layers (weights from ConstantOfShape) narrowed to HIDDEN units, in place."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    for i, node in enumerate(gemms):
        for k, name in enumerate(node.input[1:3], start=1):
            shape_of = producer[name]
            shape = numpy_helper.to_array(inits[shape_of.input[0]]).copy()
            if i < len(gemms) - 1:
                shape[0] = HIDDEN
            if k == 1 and i > 0:
                shape[1] = HIDDEN
            new = numpy_helper.from_array(shape, f"{name}_narrow_shape")
            model.graph.initializer.append(new)
            shape_of.input[0] = new.name


def _light(name: str) -> onnx.ModelProto:
    model = onnx.load(str(materialize.light_dir() / name))
    if sum(int(np.prod(numpy_helper.to_array(t))) for t in model.graph.initializer
           if t.data_type == onnx.TensorProto.INT64 and len(t.dims) == 1) > 20_000_000:
        _narrow_fc(model)
    return normalize(materialize.materialize(model, seed=0))


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(model, name, x):
    return _session(model).run(None, {name: x})


@pytest.mark.parametrize("name", LIGHT)
def test_light_topology_gets_exits(name):
    model = _light(name)
    g = to_graph(model)
    inp, out = g.inputs[0], g.outputs[0]
    out_shape = list(out.shape)
    x = np.random.default_rng(0).standard_normal((16, *inp.shape[1:]), dtype=np.float32)
    ctx = calib_context({inp.name: x}, out.name)
    report = early_exit.run(g, early_exit.Config(max_drop=100.0), ctx)
    assert report.modified and report.per_tensor["exit 0"]["node"]
    exits = to_model(g, like=model)
    names = [o.name for o in exits.graph.output]
    assert names == [out.name, "exit_index"]
    sess = _session(exits)
    for batch in (1, 7):
        y, taken = sess.run(None, {inp.name: x[:batch]})
        assert list(y.shape) == [batch, *out_shape[1:]] and taken.shape == (batch,)
    # thresholds out of reach: every sample goes to the end, and gets the original outputs
    forced = onnx.ModelProto()
    forced.CopyFrom(exits)
    for t in forced.graph.initializer:
        if "threshold" in t.name:
            t.CopyFrom(numpy_helper.from_array(np.array(1e30, np.float32), t.name))
    y, taken = _run(forced, inp.name, x[:1])
    assert taken.tolist() == [len(report.per_tensor) - 1]
    np.testing.assert_array_equal(y, _run(to_model(to_graph(model), like=model), inp.name,
                                          x[:1])[0])
