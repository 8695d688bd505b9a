"""Analytic layer output means, bias slots and sequential bias correction."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.calibration import GraphSession, run_graph
from onnxcompress.compensate import bias as C
from onnxcompress.data import Dataset
from onnxcompress.graph import iter_weights
from onnxcompress.kernels.masks import apply_mask, magnitude_mask
from tests.passes import small_nets as S

OUTPUTS = {"conv1_w": "c1", "conv2_w": "c2", "fc1_w": "h", "fc2_w": "logits"}  # bias included


def layer_outputs(g: gs.Graph, data: dict) -> dict[str, np.ndarray]:
    """Weight name -> per-channel mean of its layer's output, captured on ONNX Runtime."""
    weights = iter_weights(g)
    means = GraphSession(g, list(OUTPUTS.values())).means(Dataset(data, None))
    out = {}
    for w in weights:
        m = means[OUTPUTS[w.tensor.name]]
        o = w.out_channels
        out[w.tensor.name] = (
            m.reshape(o, -1).mean(1) if w.node.op == "Conv" else m.reshape(-1, o).mean(0)
        )
    return out


def test_analytic_output_means_match_onnxruntime() -> None:
    g, data = S.graph(), S.feeds(200)
    weights = iter_weights(g)
    means = GraphSession(g, [w.node.inputs[0].name for w in weights]).means(Dataset(data, None))
    stats = C.input_stats(means, weights)
    measured = layer_outputs(g, data)
    biases = {"Conv_0": "conv1_b", "Gemm_6": "fc1_b"}
    for w in weights:
        want = measured[w.tensor.name]
        if w.layer in biases:
            want = want - np.asarray(g.tensors()[biases[w.layer]].values)
        np.testing.assert_allclose(
            C.output_mean(w, w.values, stats[w.tensor.name]),
            want,
            rtol=1e-4,
            atol=1e-4,
            err_msg=w.layer,
        )


def test_bias_slots_are_created_and_removed() -> None:
    g = S.graph()
    by_layer = {w.layer: w for w in iter_weights(g)}
    conv2, fc2, fc1 = by_layer["Conv_3"], by_layer["MatMul_8"], by_layer["Gemm_6"]
    assert C.bias_slot(g, fc1).created is False
    slot_conv = C.bias_slot(g, conv2)
    slot_mm = C.bias_slot(g, fc2)
    assert slot_conv.created and len(conv2.node.inputs) == 3
    assert slot_mm.created and slot_mm.add is not None
    assert C.bias_slot(g, fc2).tensor is slot_mm.tensor  # the Add is found again, not re-added
    before = run_graph(g, S.feeds(20))
    assert C.drop_if_unused(g, conv2, slot_conv) and C.drop_if_unused(g, fc2, slot_mm)
    g.cleanup().toposort()
    assert len(conv2.node.inputs) == 2 and "Add" not in [n.op for n in g.nodes]
    np.testing.assert_array_equal(run_graph(g, S.feeds(20)), before)


def test_sequential_correction_restores_every_layer_mean() -> None:
    g, data = S.graph(), S.feeds(300)
    reference = layer_outputs(g, data)
    weights = iter_weights(g)
    means = GraphSession(g, [w.node.inputs[0].name for w in weights]).means(Dataset(data, None))
    stats = C.input_stats(means, weights)
    layers = []
    for w in weights:
        before = w.values.copy()
        w.set_values(apply_mask(before, magnitude_mask(before, 0.7)))
        layers.append(C.Corrected(w, C.bias_slot(g, w), before, stats[w.tensor.name]))
    pruned = layer_outputs(g, data)
    C.correct_biases(g, layers, Dataset(data, None))
    after = layer_outputs(g, data)
    for name, want in reference.items():
        shift_before = np.abs(pruned[name] - want).max()
        assert shift_before > 1e-2, name  # pruning 70% really moved the means
        np.testing.assert_allclose(after[name], want, rtol=1e-4, atol=1e-4, err_msg=name)
