"""The early-exit pass against ONNX Runtime on the original model: per-sample exits in input
order at batch 1 and 7, exact outputs for samples that go to the end, the heads' outputs for
the others, every criterion, chosen exits, bad inputs and the budget."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxcompress.calibration import GraphSession
from onnxcompress.data import Dataset
from onnxcompress.errors import BadInputError
from onnxcompress.exits import ExitTable
from onnxcompress.graph import to_graph, to_model
from onnxcompress.kernels.heads import confidence, pool_features
from onnxcompress.passes import early_exit
from tests.helpers import calib_context

from .exit_nets import RESNET_PROB, images, resnet

N_CALIB = 600


def _insert(model: onnx.ModelProto, labels=None, n=N_CALIB, **settings):
    g = to_graph(model)
    ctx = calib_context({"input": images(n)}, g.outputs[0].name, labels)
    cfg = early_exit.Config(**{"max_drop": 5.0, "exit_overhead": 1e4, **settings})
    report = early_exit.run(g, cfg, ctx)
    g.cleanup().toposort()
    return to_model(g, like=model), report


def _sess(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _thresholds(model: onnx.ModelProto, value: float) -> onnx.ModelProto:
    """A copy whose every exit threshold is `value` (they are copied into each branch)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)

    def walk(graph):
        for t in graph.initializer:
            if "threshold" in t.name:
                t.CopyFrom(onnx.numpy_helper.from_array(np.array(value, np.float32), t.name))
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(out.graph)
    return out


@pytest.fixture(scope="module")
def inserted():
    model = resnet()
    out, report = _insert(model)
    return model, out, report


def test_drop_in_outputs(inserted):
    model, out, report = inserted
    onnx.checker.check_model(out, full_check=True)
    assert report.modified and report.budget_met
    assert [o.name for o in out.graph.output] == ["logits", "exit_index"]
    assert out.graph.output[0] == model.graph.output[0]  # same name, type, shape
    assert out.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    table = ExitTable.from_doc(out.graph.doc_string)
    assert table is not None and len(table.exits) >= 1 and table.output == "exit_index"
    assert {e.node for e in table.exits} <= {"MaxPool_2", "Relu_7"}


def test_per_sample_exits_in_input_order(inserted):
    model, out, _ = inserted
    x = images(7, seed=9)
    sess, base = _sess(out), _sess(model)
    y7, e7 = sess.run(None, {"input": x})
    assert y7.shape == (7, 5) and e7.shape == (7,) and e7.dtype == np.int64
    for i in range(7):  # batch 1 agrees with batch 7, sample by sample
        y1, e1 = sess.run(None, {"input": x[i:i + 1]})
        assert e1.tolist() == [e7[i]]
        np.testing.assert_allclose(y1[0], y7[i], rtol=1e-5, atol=1e-5)
    end = len(ExitTable.from_doc(out.graph.doc_string).exits)
    for i in np.nonzero(e7 == end)[0]:  # to the end: exactly what the original says
        np.testing.assert_array_equal(sess.run(None, {"input": x[i:i + 1]})[0],
                                      base.run(None, {"input": x[i:i + 1]})[0])


def test_exits_answer_with_their_heads(inserted):
    model, out, _ = inserted
    table = ExitTable.from_doc(out.graph.doc_string)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    x = images(200, seed=5)
    y, taken = _sess(out).run(None, {"input": x})
    acts = GraphSession(to_graph(model), [e.tensor for e in table.exits]).collect(
        Dataset({"input": x}, None))
    reach = np.ones(len(x), bool)
    for k, e in enumerate(table.exits):
        w, b = inits[f"early_exit/exit{k}/weight"], inits[f"early_exit/exit{k}/bias"]
        cells = re.search(r"pool to (\d+)x", e.head)
        grid = int(cells.group(1)) if cells else 1
        z = pool_features(acts[e.tensor], grid).astype(np.float64) @ w + b
        s = confidence(z, table.criterion)
        sure = np.abs(s - e.threshold) > 1e-4  # leave float ties at the threshold alone
        leave = reach & (s >= e.threshold)
        assert ((taken == k) == leave)[sure].all()
        np.testing.assert_allclose(y[taken == k], z[taken == k], rtol=1e-4, atol=1e-4)
        reach &= ~leave


@pytest.mark.parametrize("value,expect", [(-1e30, 0), (1e30, "end")])
def test_all_leave_or_none_leave(inserted, value, expect):
    model, out, _ = inserted
    forced = _thresholds(out, value)
    end = len(ExitTable.from_doc(out.graph.doc_string).exits)
    x = images(7, seed=3)
    for batch in (1, 7):
        y, taken = _sess(forced).run(None, {"input": x[:batch]})
        assert (taken == (end if expect == "end" else expect)).all()
        if expect == "end":
            np.testing.assert_array_equal(y, _sess(model).run(None, {"input": x[:batch]})[0])


@pytest.mark.parametrize("criterion", ["entropy", "margin"])
def test_criteria(criterion):
    model, labels = resnet(), None
    out, report = _insert(model, labels, criterion=criterion)
    table = ExitTable.from_doc(out.graph.doc_string)
    assert table.criterion == criterion and report.budget_met
    y, taken = _sess(out).run(None, {"input": images(50, seed=4)})
    assert y.shape == (50, 5) and set(taken.tolist()) <= set(range(len(table.exits) + 1))


def test_probability_outputs_keep_their_shape():
    model = resnet(text=RESNET_PROB)
    out, _ = _insert(model)
    y, _ = _sess(out).run(None, {"input": images(7, seed=2)})
    assert y.shape == (7, 5, 1, 1)
    np.testing.assert_allclose(y.sum(axis=1).ravel(), 1.0, rtol=1e-5)
    assert out.graph.output[0] == model.graph.output[0]


def test_labels_budget_and_explicit_exits():
    model = resnet()
    x = images(N_CALIB)
    labels = _sess(model).run(None, {"input": x})[0].argmax(1)
    out, report = _insert(model, labels=labels, exits="MaxPool_2")
    table = ExitTable.from_doc(out.graph.doc_string)
    assert [e.node for e in table.exits] == ["MaxPool_2"]
    assert "accuracy" in report.notes[0] and report.per_tensor["exit 0"]["node"] == "MaxPool_2"


def test_exits_inside_a_residual_pair_are_refused():
    with pytest.raises(BadInputError, match=r"'Relu_4' is not a valid exit point: the rest "
                                            r"of the graph also reads 'p0'"):
        _insert(resnet(), exits="MaxPool_2,Relu_4")
    with pytest.raises(BadInputError, match=r"no node named 'nope'.*valid points: Conv_0"):
        _insert(resnet(), exits="nope")


def test_too_little_calibration_data_says_how_much():
    with pytest.raises(BadInputError, match=r"has 30 samples; early exit needs at least 40"):
        _insert(resnet(), n=30, max_drop=5.0)
    with pytest.raises(BadInputError, match=r"needs at least 400: 200 to fit"):
        _insert(resnet(), n=300, max_drop=0.5)


def test_no_calibration_data():
    g = to_graph(resnet())
    with pytest.raises(BadInputError, match="needs calibration data"):
        early_exit.run(g, early_exit.Config(), early_exit.Context())


def test_a_budget_nothing_meets_leaves_the_model_unchanged():
    model = resnet()
    g = to_graph(model)
    before = [n.name for n in g.nodes]
    ctx = calib_context({"input": images(N_CALIB)}, "logits")
    report = early_exit.run(g, early_exit.Config(max_drop=0.0, margin=3.0), ctx)
    assert report.budget_met is False and not report.modified
    assert [n.name for n in g.nodes] == before and len(g.outputs) == 1
    assert "model is unchanged" in report.notes[-1]


def test_config_checks():
    assert early_exit.Config(exits="3").exits == 3
    assert early_exit.Config(exits="a, b").exits == ("a", "b")
    for bad in ({"exits": 0}, {"max_drop": -1}, {"label_weight": 2}, {"grid": 0}):
        with pytest.raises(ValueError):
            early_exit.Config(**bad)


@pytest.mark.parametrize("criterion", ["max-prob", "entropy", "margin"])
def test_names_are_unique_across_branches(criterion):
    out, _ = _insert(resnet(), exits="MaxPool_2,Relu_7", criterion=criterion, max_drop=50.0)
    names: list[str] = []

    def walk(graph):
        names.extend(t.name for t in graph.initializer)
        for node in graph.node:
            names.extend(o for o in node.output if o)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(out.graph)
    assert len(names) == len(set(names))
    y, taken = _sess(out).run(None, {"input": images(9, seed=6)})
    assert y.shape == (9, 5) and taken.shape == (9,)
