"""Least-squares refit kernel: im2col layout, per-row masked ridge solutions."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.kernels import refit as R
from tests.kernels.test_bias import ort_conv


@pytest.mark.parametrize(
    "attrs",
    [{"pads": [1, 1, 1, 1]}, {"pads": [0, 1, 2, 0], "strides": [2, 1], "dilations": [1, 2]}],
)
def test_im2col_matches_onnxruntime_conv(attrs: dict) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 9, 8)).astype(np.float32)
    w = rng.normal(size=(5, 4, 3, 3)).astype(np.float32)
    rows = R.im2col(
        x, [3, 3], attrs.get("strides", [1, 1]), attrs["pads"], attrs.get("dilations", [1, 1])
    )
    want = ort_conv(x, w, **attrs)  # (B, O, H', W')
    got = (rows @ w.reshape(5, -1).T).reshape(3, *want.shape[2:], 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def direct(gram, cross, keep, lam, prior):
    """Row by row with np.linalg.solve on the kept set plus the bias."""
    o, k = keep.shape
    w, b = np.zeros((o, k)), np.zeros(o)
    for r in range(o):
        s = np.append(np.flatnonzero(keep[r]), k)
        a = gram[np.ix_(s, s)].copy()
        a[np.arange(s.size - 1), np.arange(s.size - 1)] += lam
        rhs = cross[s, r].copy()
        rhs[:-1] += lam * prior[r, s[:-1]]
        sol = np.linalg.solve(a, rhs)
        w[r, s[:-1]], b[r] = sol[:-1], sol[-1]
    return w, b


@pytest.mark.parametrize("budget", [1 << 24, 300, 1])  # one batch, several, one row each
def test_masked_lstsq_matches_direct_solves(budget: int, monkeypatch) -> None:
    monkeypatch.setattr(R, "SOLVE_BUDGET", budget)
    monkeypatch.setattr(R, "FAST_FLOPS", 1.0)  # force the row-by-row path
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 1.0, (300, 20))
    w0 = rng.normal(size=(6, 20))
    y = x @ w0.T + 0.5
    keep = rng.random((6, 20)) < 0.5
    keep[2] = False  # a row with nothing kept: bias only
    x1 = R.with_ones(x)
    gram, cross = x1.T @ x1, x1.T @ y
    w, b = R.masked_lstsq(gram, cross, keep, damp=0.05, prior=w0)
    lam = 0.05 * R.ridge_scale(gram)
    want_w, want_b = direct(gram, cross, keep, lam, w0)
    np.testing.assert_allclose(w, want_w, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b, want_b, rtol=1e-8, atol=1e-10)
    assert (w[~keep] == 0).all() and not np.signbit(w[~keep]).any()


def test_refit_recovers_exact_solution_and_prior_limits() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 10))
    w_true = rng.normal(size=(3, 10)) * (rng.random((3, 10)) < 0.5)
    y = x @ w_true.T - 1.0
    x1 = R.with_ones(x)
    gram, cross = x1.T @ x1, x1.T @ y
    w, b = R.masked_lstsq(gram, cross, w_true != 0, damp=1e-9)
    np.testing.assert_allclose(w, w_true, atol=1e-6)
    np.testing.assert_allclose(b, -1.0, atol=1e-6)
    # a huge ridge toward the prior keeps the prior's kept weights: bias correction only
    w_big, b_big = R.masked_lstsq(gram, cross, np.ones((3, 10), bool), damp=1e9, prior=w_true)
    np.testing.assert_allclose(w_big, w_true, atol=1e-6)
    np.testing.assert_allclose(b_big, -1.0, atol=1e-3)


def _objective(gram, cross, w, b, lam, prior):
    full = np.hstack([w, b[:, None]])
    fit = np.einsum("ri,ij,rj->", full, gram, full) - 2 * np.einsum("ri,ir->", full, cross)
    return fit + lam * ((w - prior) ** 2).sum()


@pytest.mark.parametrize("sparsity", [0.3, 0.7, 0.95])
def test_the_whole_layer_path_reaches_the_row_by_row_optimum(sparsity: float,
                                                              monkeypatch) -> None:
    """OBS sweep + conjugate gradient: the objective of the exact per-row solutions (within
    0.5% of what the refit removes), pruned weights exactly +0.0, on correlated inputs."""
    rng = np.random.default_rng(3)
    k, o = 120, 40
    mix = rng.normal(size=(k, 12)) @ rng.normal(size=(12, k)) / 4 + np.eye(k)
    x = rng.normal(0.5, 1.0, (2000, k)) @ mix
    w0 = rng.normal(size=(o, k)) / np.sqrt(k)
    x1 = R.with_ones(x)
    gram, cross = x1.T @ x1, x1.T @ (x @ w0.T + 0.3)
    keep = np.abs(w0) > np.quantile(np.abs(w0), sparsity)
    lam = 0.01 * R.ridge_scale(gram)
    exact = direct(gram, cross, keep, lam, w0)
    monkeypatch.setattr(R, "EXACT_FLOPS", 1.0)  # force the whole-layer path
    w, b = R.masked_lstsq(gram, cross, keep, damp=0.01, prior=w0)
    assert (w[~keep] == 0).all() and not np.signbit(w[~keep]).any()
    start = _objective(gram, cross, w0 * keep, np.full(o, 0.3), lam, w0)
    best = _objective(gram, cross, *exact, lam, w0)
    got = _objective(gram, cross, w, b, lam, w0)
    assert got - best <= 0.005 * (start - best)


@pytest.mark.parametrize("kernel,strides,pads,dilations,spatial", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (7, 6)),
    ((3, 2), (2, 1), (0, 1, 2, 0), (1, 2), (9, 8)),
    ((5,), (3,), (2, 1), (2,), (17,)),
    ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1), (5, 5)),
])
def test_im2col_of_sampled_rows_is_those_rows_of_the_whole(kernel, strides, pads, dilations,
                                                           spatial) -> None:
    x = np.random.default_rng(4).normal(size=(3, 4, *spatial)).astype(np.float32)
    whole = R.im2col(x, kernel, strides, pads, dilations)
    rows = np.sort(np.random.default_rng(5).choice(len(whole), len(whole) // 3, replace=False))
    assert np.array_equal(R.im2col(x, kernel, strides, pads, dilations, rows=rows), whole[rows])


@pytest.mark.parametrize("groups, per, block_bytes", [(1, 4, 64 << 20), (3, 2, 64 << 20),
                                                      (12, 1, 1), (1, 8, 64 << 20), (3, 6, 1)])
def test_grouped_normal_terms_are_each_groups_own(groups: int, per: int, block_bytes: int,
                                                  monkeypatch) -> None:
    """Grams and cross terms computed a block of groups at a time (down to one group per
    block) equal each group's own, with the ones column last; the cross terms of layers with
    more outputs than half their fan-in (through X^T Y) too."""
    from onnxcompress.compensate import refit as C

    monkeypatch.setattr(C, "GROUP_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(3)
    n, f = 50, 9
    x = rng.normal(size=(groups, n, f)).astype(np.float32)
    y = rng.normal(size=(groups, n, f)).astype(np.float32)
    w = rng.normal(size=(groups, per, f))
    b = rng.normal(size=(groups, per))
    gram, cross = C._normal_terms(x, y, w, b)
    for g in range(groups):
        xo = R.with_ones(x[g])
        np.testing.assert_allclose(gram[g], xo.T @ xo, rtol=1e-12, atol=1e-9)
        out = y[g].astype(np.float64) @ w[g].T + b[g]
        np.testing.assert_allclose(cross[g], xo.T @ out, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("groups, per, block_bytes", [(1, 8, 64 << 20), (3, 6, 1), (12, 1, 1)])
def test_cross_terms_through_input_moments_are_the_same_terms(groups: int, per: int,
                                                             block_bytes: int, monkeypatch) -> None:
    """The Grams, X^T Y and Y's sums of several blocks of rows, a block of groups at a time,
    give each group's Gram and the cross terms that the outputs give."""
    from onnxcompress.compensate import refit as C

    monkeypatch.setattr(C, "GROUP_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(4)
    n, f = 40, 9
    blocks = [(rng.normal(size=(groups, n, f)).astype(np.float32),
               rng.normal(size=(groups, n, f)).astype(np.float32)) for _ in range(2)]
    w = rng.normal(size=(groups, per, f))
    b = rng.normal(size=(groups, per))
    gram, xty, y_sum = C._input_moments(blocks)
    cross = C._from_moments(gram, xty, y_sum, w, b)
    for g in range(groups):
        xo = R.with_ones(np.concatenate([x[g] for x, _ in blocks]))
        y = np.concatenate([y[g] for _, y in blocks]).astype(np.float64)
        np.testing.assert_allclose(gram[g], xo.T @ xo, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(cross[g], xo.T @ (y @ w[g].T + b[g]), rtol=1e-10, atol=1e-9)


def test_layer_statistics_sample_rows_per_sample_not_per_batch() -> None:
    """A model with a fixed batch of 1 gives its Grams as many rows per sample as one that
    runs 256 samples at a time: ROWS_PER_SAMPLE, not every position of every sample."""
    import onnx_graphsurgeon as gs

    from onnxcompress.compensate import refit as C
    from onnxcompress.graph import iter_weights
    from tests.conftest import tiny_cnn

    conv = next(w for w in iter_weights(gs.import_onnx(tiny_cnn())) if w.node.op == "Conv")
    small = np.zeros((3, 1, 4, 4), np.float32)  # 48 positions: all of them
    assert C._pick(conv, small, 0) == slice(None)
    for batch in (1, 5):
        x = np.zeros((batch, 1, 32, 32), np.float32)  # 1,024 positions per sample
        picked = C._pick(conv, x, 0)
        assert len(picked) == C.ROWS_PER_SAMPLE * batch
        assert len(C.input_rows(conv, x, picked)) == C.ROWS_PER_SAMPLE * batch


def test_grams_gathered_over_batches_equal_the_sum_of_each_batchs(monkeypatch) -> None:
    """Rows of several small batches are gathered before their Gram is taken (a batch-1 model
    gives 64 rows a batch): the Grams are those of every batch added up."""
    import onnx_graphsurgeon as gs

    from onnxcompress.calibration import Snapshot
    from onnxcompress.compensate import refit as C
    from onnxcompress.data import Dataset
    from onnxcompress.graph import iter_weights
    from tests.conftest import tiny_cnn, tiny_data

    graph = gs.import_onnx(tiny_cnn())
    weights = iter_weights(graph)
    data = Dataset({"input": tiny_data(40)["input"]}, None, batch=3)
    grams = {}
    for gather in (1, 1 << 40):  # a Gram per batch; one Gram of all rows
        monkeypatch.setattr(C, "GATHER_BYTES", gather)
        grams[gather] = C.layer_grams(Snapshot(graph.copy()), weights, data)
    assert grams[1].keys() == grams[1 << 40].keys() == {w.tensor.name for w in weights}
    for name, gram in grams[1].items():
        np.testing.assert_allclose(grams[1 << 40][name], gram, rtol=1e-10, atol=1e-8)


def test_refit_of_a_badly_conditioned_wide_layer_does_not_fail() -> None:
    """Inputs with a mean far above their spread and fewer rows than inputs (a classifier
    after global pooling, refit on a few hundred samples) make H's condition number about
    1e9: H^-1's rounding made it indefinite and its Cholesky factor failed. The factor is
    now taken from H itself; the codebook refit still beats plain rounding."""
    rng = np.random.default_rng(2)  # (one of the draws on which the old factor failed)
    n, f, o = 64, 512, 16
    x = 1000.0 + rng.normal(size=(n, f))
    w = rng.normal(size=(o, f))
    xo = R.with_ones(x)
    gram = xo.T @ xo
    cross = xo.T @ (x @ w.T)
    ridge = R.ridge_optimum(gram, cross, 0.01, w)
    u = ridge.upper
    assert np.array_equal(u, np.triu(u)) and (np.diag(u) > 0).all()
    book = np.linspace(-2.5, 2.5, 16)
    q, b = R.quantize_lstsq(gram, cross, np.ones((o, f), dtype=bool), book, 0.01, w)
    rounded = book[np.abs(w[..., None] - book).argmin(axis=-1)]
    assert np.isin(q, book).all()
    err = lambda wq, bias: np.square(x @ wq.T + bias - x @ w.T).mean()
    assert err(q, b) < 0.01 * err(rounded, 0.0)


def _shared_and_own_refits(model, data, monkeypatch) -> tuple[dict, dict, int]:
    """Every constant after a sweep that snaps each weight to a 4-value codebook and refits it,
    with the shared X^T Y terms and with each layer's own (through its outputs); and how many
    times the shared terms were computed."""
    import onnx_graphsurgeon as gs

    from onnxcompress.calibration import Snapshot
    from onnxcompress.compensate import Compensator
    from onnxcompress.compensate import refit as C
    from onnxcompress.graph import iter_weights

    book = np.array([-1.0, -0.3, 0.3, 1.0])

    def refit(shared: bool) -> dict[str, np.ndarray]:
        monkeypatch.setattr(C, "_through_inputs", lambda o, fan_in: shared)
        g = gs.import_onnx(model)
        ws = iter_weights(g)
        comp = Compensator(g, ws, Snapshot(g.copy()), data, refit=True)
        for w in ws:  # each weight onto the codebook's nearest value
            w.set_values(book[np.abs(w.values[..., None] - book).argmin(-1)].astype(np.float32))
        comp.sweep(ws, codebooks={w.tensor.name: book for w in ws})
        return {t.name: np.asarray(t.values) for t in g.tensors().values()
                if isinstance(t, gs.Constant)}

    calls = []
    moments = C._input_moments
    monkeypatch.setattr(C, "_input_moments", lambda blocks: calls.append(1) or moments(blocks))
    return refit(True), refit(False), len(calls)


def _model(nodes, weights, x, outputs: dict[str, list]):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o, shape in outputs.items()],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_layers_on_one_input_share_their_terms_and_get_each_their_own_refit(monkeypatch) -> None:
    """Attention's query, key and value projections read one tensor: the sweep takes the
    Gram and X^T Y once for them, and each layer's refit is the one it gets from its own
    normal equations (computed through its outputs, sharing nothing)."""
    from onnx import helper, numpy_helper

    from onnxcompress.data import Dataset

    rng = np.random.default_rng(5)
    f, names = 12, ("q", "k", "v")
    weights = [numpy_helper.from_array(rng.normal(size=(f, f)).astype(np.float32), f"w_{n}")
               for n in names]
    weights += [numpy_helper.from_array(rng.normal(size=f).astype(np.float32), f"b_{n}")
                for n in names]
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu")]
    nodes += [helper.make_node("MatMul", ["h", f"w_{n}"], [f"m_{n}"], name=n) for n in names]
    nodes += [helper.make_node("Add", [f"m_{n}", f"b_{n}"], [f"y_{n}"], name=f"bias_{n}")
              for n in names]
    nodes += [helper.make_node("Add", ["y_q", "y_k"], ["s"], name="add1"),
              helper.make_node("Add", ["s", "y_v"], ["out"], name="add2")]
    data = Dataset({"x": rng.normal(size=(300, f)).astype(np.float32)}, None, batch=64)
    shared, alone, computed = _shared_and_own_refits(
        _model(nodes, weights, ["n", f], {"out": ["n", f]}), data, monkeypatch)
    assert computed == 1  # one input, three layers
    assert shared.keys() == alone.keys() and len(shared) >= 6  # three weights, three biases
    for name, values in alone.items():
        np.testing.assert_allclose(shared[name], values, rtol=1e-5, atol=1e-6)


def test_convolutions_on_one_input_with_other_strides_share_nothing(monkeypatch) -> None:
    """Two 3x3 convs on one tensor, strides 1 and 2: the same input and fan-in, other rows;
    each gets its own terms and its own refit."""
    from onnx import helper, numpy_helper

    from onnxcompress.data import Dataset

    rng = np.random.default_rng(6)
    weights = [numpy_helper.from_array(rng.normal(size=(16, 2, 3, 3)).astype(np.float32), n)
               for n in ("w1", "w2")]
    weights += [numpy_helper.from_array(rng.normal(size=16).astype(np.float32), n)
                for n in ("b1", "b2")]
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("Conv", ["h", "w1", "b1"], ["y1"], name="c1", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[1, 1]),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y2"], name="c2", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[2, 2])]
    data = Dataset({"x": rng.normal(size=(200, 2, 6, 6)).astype(np.float32)}, None, batch=50)
    shared, alone, computed = _shared_and_own_refits(
        _model(nodes, weights, ["n", 2, 6, 6], {"y1": ["n", 16, 6, 6], "y2": ["n", 16, 3, 3]}), data, monkeypatch)
    assert computed == 2
    for name, values in alone.items():
        np.testing.assert_allclose(shared[name], values, rtol=1e-5, atol=1e-6)
