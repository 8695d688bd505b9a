"""FLOPs and parameters per node from shape inference; one conv geometry."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxcompress.graph import GeometryError, conv_geometry, to_graph
from onnxcompress.graph.cost import graph_costs, infer_shapes
from onnxcompress.io import load_model
from onnxcompress.normalize import normalize
from tests.conftest import ZOO

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[B, S, 16] x) => (float[B, S, 4] y) {
    h = MatMul (x, w1)
    a = Add (h, b1)
    r = Relu (a)
    y = MatMul (r, w2)
}
"""


def test_lenet5_costs_are_exact() -> None:
    g = to_graph(normalize(load_model(ZOO / "lenet5.onnx")))
    costs = {c.op + str(i): c for i, c in enumerate(graph_costs(g))}
    conv1, conv2 = [c for c in costs.values() if c.op == "Conv"]
    assert conv1.output_shape == (1, 20, 24, 24)
    assert conv1.flops == 2 * 20 * 24 * 24 * 25 + 20 * 24 * 24  # MACs x 2 + bias
    assert conv1.params == 20 * 25 + 20
    assert conv2.flops == 2 * 50 * 8 * 8 * (20 * 25) + 50 * 8 * 8
    gemms = [c for c in costs.values() if c.op == "Gemm"]
    assert [c.flops for c in gemms] == [2 * 500 * 800 + 500, 2 * 10 * 500 + 10]
    pools = [c for c in costs.values() if c.op == "MaxPool"]
    assert pools[0].flops == 20 * 12 * 12 * 4
    total_params = sum(c.params for c in costs.values())
    assert total_params == 431_080  # every weight and bias of the zoo's LeNet-5


def test_symbolic_dims_are_bound() -> None:
    model = onnx.parser.parse_model(MLP)
    import numpy as np
    from onnx import numpy_helper

    for name, shape in (("w1", (16, 32)), ("b1", (32,)), ("w2", (32, 4))):
        model.graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), name))
    g = to_graph(model)
    assert infer_shapes(g)["y"] == (1, 1, 4)
    costs = graph_costs(g, {"S": 10})
    assert [c.flops for c in costs] == [2 * 10 * 32 * 16, 10 * 32, 10 * 32, 2 * 10 * 4 * 32]


def test_xnor_conv_outputs_get_their_shapes() -> None:
    g = to_graph(load_model(ZOO / "binary_xnor.onnx"))
    from onnxcompress.passes import binarize
    from onnxcompress.passes.base import Context

    binarize.run(g, binarize.Config(), Context())
    costs = graph_costs(g)
    assert any(c.op == "XnorConv" for c in costs)
    assert all(c.output_shape is not None for c in costs)
    assert costs[-1].output_shape == (1, 10)


def _conv(attrs: str) -> gs.Node:
    model = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 10, 9] x, float[4, 3, 3, 3] w) => (float[1, 4, 5, 5] y) {{
        y = Conv <{attrs}> (x, w)
    }}""")
    return gs.import_onnx(model).nodes[0]


def test_conv_geometry_makes_padding_explicit() -> None:
    same = _conv('auto_pad = "SAME_UPPER", strides = [2, 2]')
    assert conv_geometry(same, (10, 9)).pads == (0, 1, 1, 1)
    lower = _conv('auto_pad = "SAME_LOWER", strides = [2, 2]')
    assert conv_geometry(lower, (10, 9)).pads == (1, 1, 0, 1)
    assert conv_geometry(_conv('auto_pad = "VALID"')).pads == (0, 0, 0, 0)
    geo = conv_geometry(_conv("pads = [1, 2, 1, 2], dilations = [2, 1]"))
    assert (geo.kernel, geo.pads, geo.dilations) == ((3, 3), (1, 2, 1, 2), (2, 1))
    assert geo.output_size((10, 9)) == (8, 11)
    with pytest.raises(GeometryError, match="SAME_UPPER needs a known input"):
        conv_geometry(same)
