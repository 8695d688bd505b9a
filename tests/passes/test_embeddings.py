"""Embedding tables (a Gather's constant table) are weights: pruned, clustered with their own
bits, stored compactly; a tied table (also in a MatMul, transposed) is stored once."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcompress.calibration import run_graph
from onnxcompress.graph import iter_weights, resolve_weight, to_graph
from onnxcompress.io import write_output
from onnxcompress.normalize import normalize
from onnxcompress.passes import cluster, prune
from onnxcompress.passes.base import Context
from onnxcompress.runtime import Session

# token embedding, a hidden MatMul, and an output head tied to the embedding (E^T)
LM = """
<ir_version: 8, opset_import: ["" : 17]>
lm (int64[N, S] ids) => (float[N, S, 64] logits) {
    e = Gather (table, ids)
    h = MatMul (e, w)
    r = Relu (h)
    et = Transpose <perm = [1, 0]> (table)
    logits = MatMul (r, et)
}
"""


def lm() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    m = onnx.parser.parse_model(LM)
    m.graph.initializer.extend([
        numpy_helper.from_array(rng.normal(0, 1, (64, 32)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.normal(0, 0.2, (32, 32)).astype(np.float32), "w")])
    return m


def ids(n: int = 8) -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(1).integers(0, 64, (n, 5)).astype(np.int64)}


def test_the_table_is_a_weight_and_its_transpose_is_tied_again() -> None:
    norm = normalize(lm())  # ORT folds Transpose(table) into a second initializer...
    names = [t.name for t in norm.graph.initializer]
    assert sum(t.dims[0] * t.dims[1] == 2048 for t in norm.graph.initializer) == 1, names
    g = to_graph(norm)  # ...which normalization gives back as Transpose(table)
    kinds = {w.tensor.name: w.kind for w in iter_weights(g)}
    assert kinds == {"table": "embedding", "w": "fc"}
    np.testing.assert_allclose(run_graph(g, ids()), run_graph(to_graph(lm()), ids()),
                               rtol=1e-6)


def test_prune_and_cluster_a_table_with_its_own_bits(tmp_path) -> None:
    g = to_graph(normalize(lm()))
    prune.run(g, prune.Config(sparsity=0.5, bias_correction=False), Context())
    report = cluster.run(g, cluster.Config(bits_embedding=3, bits_fc=6), Context())
    table = np.asarray(g.tensors()["table"].values)
    assert (table == 0).mean() >= 0.5 - 1e-9
    assert len(np.unique(table[table != 0])) <= 7  # 3 bits, 0 kept apart
    assert report.per_tensor["table"]["bits"] == 3 and report.per_tensor["w"]["bits"] == 6
    from onnxcompress.graph import to_light_model

    model, arrays = to_light_model(g)
    creport = write_output(model, tmp_path / "lm.onnxc", arrays)
    row = next(t for t in creport.tensors if t.name == "table")
    assert row.stored_bytes < 64 * 32 * 4 / 6  # a sparse/codebook codec, not float32
    got = Session(tmp_path / "lm.onnxc").run(None, ids())[0]
    np.testing.assert_allclose(got, run_graph(g, ids()), rtol=1e-5, atol=1e-5)


def test_a_codebook_gather_is_not_a_layer() -> None:
    g = to_graph(normalize(lm()))
    cluster.run(g, cluster.Config(form="gather"), Context())
    g.cleanup().toposort()
    ops = [n.op for n in g.nodes]
    assert ops.count("Gather") == 3  # two decoders and the lookup
    assert sorted(w.kind for w in iter_weights(g)) == []  # decoded tables are not constants


def test_a_table_without_zeros_is_shared_by_rows(tmp_path) -> None:
    """Each row keeps its mean and deviation, one codebook serves the standardized values;
    the graph decodes it (Gather, Mul, Add) to exactly the values the pass computed."""
    from onnxcompress.kernels.kmeans import rows_value, share_rows
    from onnxcompress.report.stats import layer_rows

    g = to_graph(normalize(lm()))
    original = np.asarray(g.tensors()["table"].values).copy()
    report = cluster.run(g, cluster.Config(bits_embedding=4, bits_fc=8), Context())
    assert report.per_tensor["table"]["form"] == "rows"
    want = rows_value(*share_rows(original, 4))
    assert not any(w.kind == "embedding" for w in iter_weights(g))  # decoded in-graph now
    from onnxcompress.graph import to_light_model

    model, arrays = to_light_model(g)
    creport = write_output(model, tmp_path / "lm.onnxc", arrays)
    idx = next(t for t in creport.tensors if t.name.startswith("table_z_indices"))
    assert idx.stored_bytes < 64 * 32 * 4 / 8 * 1.1  # 4-bit indices, not float32
    got = Session(tmp_path / "lm.onnxc").run(None, ids())[0]
    np.testing.assert_array_equal(got, run_graph(g, ids()))
    lookup = next(n for n in g.nodes if n.op == "Gather" and n.inputs[1].name == "ids")
    decoded, stored = resolve_weight(lookup, 0)
    np.testing.assert_array_equal(decoded, want)  # the graph decodes the pass's own values
    assert {c.name for c in stored} >= {"table_z_indices"}
    table_row = next(r for r in layer_rows(model, arrays=arrays) if r.op == "Gather")
    assert table_row.params == 64 * 32
