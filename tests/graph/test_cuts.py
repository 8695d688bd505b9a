"""Where a classifier can be cut (graph/cuts.py) and freeing a fixed batch (graph/batch.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxcompress.errors import UnsupportedModelError
from onnxcompress.graph import to_graph, to_model
from onnxcompress.graph.batch import free_batch
from onnxcompress.graph.cost import graph_costs, infer_shapes
from onnxcompress.graph.cuts import constant_tensors, cut_points, find_classifier
from tests.passes.exit_nets import CUTS, INSIDE, RESNET, RESNET_PROB, resnet


def _analyse(model):
    g = to_graph(model)
    shapes = infer_shapes(g)
    cls = find_classifier(g, shapes, "m.onnx")
    return g, cls, *cut_points(g, shapes, graph_costs(g), cls)


def test_cuts_of_a_residual_net():
    _, cls, cuts, why = _analyse(resnet())
    assert (cls.logits, cls.classes, cls.activation) == ("logits", 5, "")
    assert tuple(c.node for c in cuts) == CUTS
    fractions = [c.fraction for c in cuts]
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] < 1
    kinds = {c.node: c.kind for c in cuts}
    assert kinds["MaxPool_2"] == "pooling" and kinds["Add_6"] == "residual Add"
    assert kinds["Relu_7"] == "Relu after a residual Add"
    assert {c.node: c.dims for c in cuts}["MaxPool_2"] == (8, 6, 6)
    for name in INSIDE:  # the shortcut keeps p0 alive: not a cut, and it says why
        assert "also reads 'p0'" in why[name] and "residual" in why[name]
    assert "logits" in why["Gemm_12"]


def test_softmax_tail_and_score_shape():
    _, cls, cuts, _ = _analyse(resnet(text=RESNET_PROB))
    assert (cls.output, cls.logits, cls.activation, cls.out_dims) == (
        "prob", "z", "Softmax", (5, 1, 1))
    assert tuple(c.node for c in cuts) == CUTS


def test_not_a_classifier():
    text = RESNET.replace("=> (float[N, 5] logits)", "=> (float[N, 8, 6, 6] p0)")
    text = text[:text.index("    c1 = Conv")] + "}\n"
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(t for t in resnet().graph.initializer
                                   if t.name in ("w0", "b0"))
    g = to_graph(model)
    with pytest.raises(UnsupportedModelError, match=r"needs a classifier.*'p0' has shape"):
        find_classifier(g, infer_shapes(g), "m.onnx")


def test_two_outputs():
    model = resnet()
    model.graph.output.append(onnx.helper.make_tensor_value_info("p0", 1, None))
    g = to_graph(model)
    with pytest.raises(UnsupportedModelError, match="has 2 outputs"):
        find_classifier(g, infer_shapes(g), "m.onnx")


def test_constant_subgraphs_are_constants():
    model = resnet()
    # the Gemm weight decoded in-graph: Identity(wf) -> still a cut before the classifier
    for node in model.graph.node:
        if node.op_type == "Gemm":
            node.input[1] = "wf_decoded"
    model.graph.node.insert(0, onnx.helper.make_node("Identity", ["wf"], ["wf_decoded"]))
    g = to_graph(model)
    assert "wf_decoded" in constant_tensors(g)
    shapes = infer_shapes(g)
    cuts, why = cut_points(g, shapes, graph_costs(g), find_classifier(g, shapes, "m"))
    assert "MaxPool_3" in [c.node for c in cuts] and "constants only" in why["Identity_0"]


def test_free_batch_of_a_fixed_batch_model():
    text = RESNET.replace("float[N, 1, 12, 12]", "float[1, 1, 12, 12]").replace(
        "float[N, 5]", "float[1, 5]").replace("f = Flatten (g)", "f = Reshape (g, fshape)")
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(resnet().graph.initializer)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 16]), "fshape"))
    g = to_graph(model)
    notes = free_batch(g, "m.onnx")
    assert "batch size 1" in notes[0] and any("[1, 16] -> [-1, 16]" in n for n in notes)
    sess = ort.InferenceSession(to_model(g, like=model).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, 1, 12, 12)).astype(np.float32)
    assert sess.run(None, {"input": x})[0].shape == (3, 5)


def test_free_batch_refuses_what_it_cannot_free():
    text = RESNET.replace("float[N, 1, 12, 12]", "float[1, 1, 12, 12]").replace(
        "float[N, 5]", "float[1, 5]").replace("f = Flatten (g)", "f = Reshape (g, fshape)")
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(resnet().graph.initializer)
    # a shape computed at run time from a constant tensor with the batch in it
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, 16), np.float32),
                                                                "template"))
    model.graph.node.insert(0, onnx.helper.make_node("Shape", ["template"], ["fshape"]))
    g = to_graph(model)
    with pytest.raises(UnsupportedModelError, match="batch size is fixed"):
        free_batch(g, "m.onnx")


def test_spread_keeps_the_map_before_a_pooling():
    from onnxcompress.graph.cuts import spread

    _, _, cuts, _ = _analyse(resnet())
    kept = [c.node for c in spread(cuts, 8)]
    assert kept == ["Relu_1", "MaxPool_2", "Relu_7", "Relu_9", "Flatten_11"]
    assert len(spread(cuts, 2)) == 2
