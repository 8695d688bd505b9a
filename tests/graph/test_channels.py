"""Channel groups: the plan (which channels must be cut together) and cutting by it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

from onnxcompress.calibration import run_graph
from onnxcompress.graph import iter_weights, to_graph, weight_of
from onnxcompress.graph.channels import channel_groups, remove_channels
from onnxcompress.io import load_model
from onnxcompress.normalize import normalize
from tests.conftest import ZOO

# residual Add, SE gate (Mul), depthwise conv with bias, Concat, Flatten -> Gemm, LRN
NET = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[N, 3, 8, 8] x) => (float[N, 5] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, wa, ba)
    ra = Relu (a)
    b = Conv <pads = [1, 1, 1, 1]> (ra, wb, bb)
    s = Add (b, a)
    rs = Relu (s)
    bn = BatchNormalization (rs, g1, b1, m1, v1)
    d = Conv <pads = [1, 1, 1, 1], group = 8> (bn, wd, bd)
    pool = GlobalAveragePool (d)
    e = Conv (pool, we, be)
    gate = Sigmoid (e)
    se = Mul (d, gate)
    c = Conv <pads = [1, 1, 1, 1]> (x, wc)
    cat = Concat <axis = 1> (se, c)
    ps = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (cat)
    f = Flatten (ps)
    h = Gemm <transB = 1> (f, wh, bh)
    lrn_in = Conv (x, wl)
    l = LRN <size = 3> (lrn_in)
    lp = GlobalAveragePool (l)
    lf = Flatten (lp)
    hl = MatMul (lf, wm)
    y0 = Add (h, hl)
    y = Mul (y0, scale)
}
"""

SHAPES = {"wa": (8, 3, 3, 3), "ba": (8,), "wb": (8, 8, 3, 3), "bb": (8,),
          "g1": (8,), "b1": (8,), "m1": (8,), "v1": (8,), "wd": (8, 1, 3, 3), "bd": (8,),
          "we": (8, 8, 1, 1), "be": (8,), "wc": (4, 3, 3, 3), "wh": (5, 12 * 16), "bh": (5,),
          "wl": (6, 3, 1, 1), "wm": (6, 5), "scale": (5,)}


def net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(NET)
    for name, shape in SHAPES.items():
        v = rng.uniform(0.5, 1.5, shape) if name.startswith("v") else rng.normal(0, 0.5, shape)
        model.graph.initializer.append(numpy_helper.from_array(v.astype(np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def by_producer(groups) -> dict[str, object]:
    return {",".join(sorted(p.name for p in g.producers)): g for g in groups}


def test_the_plan_of_a_net_with_every_kind_of_tie() -> None:
    g = to_graph(net())
    names = {n.inputs[1].name: n.name for n in g.nodes if len(n.inputs) > 1}
    groups = by_producer(channel_groups(g))
    # the residual pair, carried through BN and the depthwise conv, tied by the gate Mul to the
    # squeeze-excitation conv: one group of 8, read by that conv and by the Gemm
    res = groups[",".join(sorted([names["wa"], names["wb"], names["we"]]))]
    assert res.cuttable and res.size == 8
    followers = {(f.node.op, f.input) for f in res.followers}
    assert {("BatchNormalization", 1), ("BatchNormalization", 4), ("Conv", 1), ("Conv", 2)} \
        <= followers
    consumers = {(u.node.op, u.offset, u.block) for u in res.consumers}
    assert ("Gemm", 0, 16) in consumers and ("Conv", 0, 1) in consumers
    c = groups[names["wc"]]  # behind the Concat: offset 8 channels of 16 positions
    assert c.cuttable and [(u.node.op, u.offset, u.block) for u in c.consumers] == [
        ("Gemm", 128, 16)]
    assert "mixes or reshapes channels" in groups[names["wl"]].blocked  # LRN
    out = groups[",".join(sorted([names["wh"], names["wm"]]))]  # tied by the Add
    assert "graph output" in out.blocked


def _cut_matches_zeroed_consumers(model: onnx.ModelProto, x: np.ndarray) -> int:
    """For every cuttable group: removing half its channels gives the outputs of the uncut
    graph whose consumers ignore those channels (their input columns zeroed)."""
    checked = 0
    for i, group in enumerate(channel_groups(to_graph(model))):
        if not group.cuttable:
            continue
        keep = np.arange(0, group.size, 2)
        drop = np.setdiff1d(np.arange(group.size), keep)
        zeroed = to_graph(model)
        plan = channel_groups(zeroed)[i]
        for use in plan.consumers:
            w, _ = weight_of(use.node)
            axis = {"Conv": 1, "MatMul": 0}.get(use.node.op, 1 if use.node.attrs.get(
                "transB", 0) else 0)
            vals = np.array(w.values)
            idx = (use.offset + drop[:, None] * use.block + np.arange(use.block)).reshape(-1)
            np.moveaxis(vals, axis, 0)[idx] = 0
            w.set_values(vals)
        cut = to_graph(model)
        remove_channels(cut, channel_groups(cut)[i], keep)
        cut.cleanup().toposort()
        onnx.checker.check_model(gs.export_onnx(cut), full_check=True)
        np.testing.assert_allclose(run_graph(cut, {zeroed.inputs[0].name: x}),
                                   run_graph(zeroed, {zeroed.inputs[0].name: x}),
                                   rtol=1e-4, atol=1e-4, err_msg=group.describe())
        checked += 1
    return checked


def test_cutting_by_the_plan_keeps_the_outputs() -> None:
    x = np.random.default_rng(1).normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    assert _cut_matches_zeroed_consumers(net(), x) == 2


@pytest.mark.parametrize("name", ["resnet", "squeezenet", "vgg", "lenet5"])
def test_zoo_plans_cut_cleanly(name: str) -> None:
    model = normalize(load_model(ZOO / f"{name}.onnx"))
    groups = channel_groups(to_graph(model))
    # every output channel of every layer belongs to exactly one group
    produced = sorted(p.name for grp in groups for p in grp.producers)
    assert produced == sorted(w.node.name for w in iter_weights(to_graph(model)))
    assert sum(grp.cuttable for grp in groups) == len(groups) - 1  # all but the logits
    x = np.load(ZOO / "data" / "eval.npz")["input"][:3]
    assert _cut_matches_zeroed_consumers(model, x) == len(groups) - 1
