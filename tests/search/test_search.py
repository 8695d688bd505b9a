"""The budget search: its trial strategy, the allocation frontier, exact pricing, and a whole
plan on a tiny model checked end to end against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcompress import search
from onnxcompress.container import codecs
from onnxcompress.graph.convert import to_graph, to_model
from onnxcompress.kernels.kmeans import share_rows, share_weights
from onnxcompress.kernels.masks import apply_mask, magnitude_mask
from onnxcompress.metrics import Metric, drop
from onnxcompress.normalize import normalize
from onnxcompress.passes.base import Context
from onnxcompress.pipeline import run
from onnxcompress.runtime import Session
from onnxcompress.search import allocate, curves, space
from onnxcompress.search.curves import Curve
from tests.conftest import tiny_cnn, tiny_data
from tests.helpers import calib_context


def _curve(name: str, scale: float) -> Curve:
    """A layer whose bytes fall and distortion grows along both ladders."""
    c = Curve(name, name, "fc", 1000)
    for i, s in enumerate((0.0, 0.5, 0.8)):
        c.prune[s] = (scale * i * i, scale * i)
    for i, b in enumerate((None, 8, 4)):
        c.cluster[b] = (scale * i * i / 2, scale * i / 2)
    c.sizes = {st: int(4000 * (1 - st.sparsity) * ((st.bits or 32) / 32)) + 10
               for st in c.settings()}
    return c


def test_frontier_runs_from_smallest_to_untouched() -> None:
    curves = [_curve("a", 1.0), _curve("b", 0.1)]
    front = allocate.frontier(curves)
    sizes = [allocate.predicted(curves, a)[0] for a in front]
    dists = [allocate.predicted(curves, a)[1] for a in front]
    assert sizes == sorted(sizes) and dists == sorted(dists, reverse=True)
    assert all(s.untouched for s in front[-1].values())
    assert front[0] == {"a": space.Setting(0.8, 4), "b": space.Setting(0.8, 4)}
    # the cheaper layer to distort ("b") is compressed first as the budget shrinks
    second_last = front[-2]
    assert second_last["a"].untouched and not second_last["b"].untouched


def _layers(n: int) -> list[Curve]:
    return [_curve(f"l{i}", 0.1 * (i + 1)) for i in range(n)]


@pytest.mark.parametrize("true_scale", [0.2, 1.0, 1.5, 4.0])
@pytest.mark.parametrize("budget", [0.3, 1.0, 3.0])
def test_boundary_finds_the_most_compressed_fitting_allocation(true_scale, budget) -> None:
    curves = _layers(5)
    front = allocate.frontier(curves)
    order = list(range(len(front)))
    dist = [allocate.predicted(curves, a)[1] for a in front]
    fits = [search.margin(0.0, budget) + true_scale * d <= budget for d in dist]
    probes: list[int] = []

    def trial(i: int) -> search.Trial:
        probes.append(i)
        d = true_scale * dist[i]
        return search.Trial(i, d, 0.0, 0, d + search.margin(0.0, budget) <= budget)

    got = search._boundary(order, trial, front, curves, budget)
    assert fits[got] and (got == 0 or not fits[got - 1])
    assert len(probes) <= 3 * len(order).bit_length() + 2


def test_boundary_needs_few_trials_when_drops_add_up() -> None:
    curves = _layers(6)
    front = allocate.frontier(curves)
    scale = search._initial_scale(curves)
    probes: list[int] = []

    def trial(i: int) -> search.Trial:
        probes.append(i)
        d = scale * allocate.predicted(curves, front[i])[1]
        return search.Trial(i, d, 0.0, 0, d + search.margin(0.0, 1.0) <= 1.0)

    search._boundary(list(range(len(front))), trial, front, curves, 1.0)
    assert len(front) > 16 and len(probes) <= 3  # the untouched end, the boundary, its neighbour


@pytest.mark.parametrize(("sparsity", "bits", "kind"), [
    (0.0, 5, "fc"), (0.8, 4, "fc"), (0.5, None, "conv"), (0.9, 3.5, "fc"), (0.0, 4, "embedding")])
def test_prices_are_what_the_container_stores(sparsity, bits, kind) -> None:
    w = np.random.default_rng(0).normal(0, 0.1, (64, 300)).astype(np.float32)
    price = space.stored_bytes(w, sparsity, bits, kind)
    pruned = apply_mask(w, magnitude_mask(w, sparsity)) if sparsity else w
    if bits is None:  # float nonzeros: priced at 4 bytes each plus their positions
        assert np.count_nonzero(pruned) * 4 <= price <= np.count_nonzero(pruned) * 4.5
        return
    if space.by_rows(pruned, kind):  # indices, a small codebook, a mean and a scale per row
        book, idx, mean, std = share_rows(pruned, bits, fit_samples=space.PRICE_FIT_SAMPLES)
        stored = codecs.encode(idx.astype(np.uint8).tobytes(), 1)
        want = len(stored.payload) + mean.nbytes + std.nbytes
        assert abs(price - want) <= 0.02 * want + 64
        return
    book, idx = share_weights(pruned, bits, fit_samples=space.PRICE_FIT_SAMPLES)
    stored = codecs.encode(book[idx].astype(np.float32).tobytes(), 4,
                           gap_bits=8 if kind == "conv" else 5)
    assert abs(price - len(stored.payload)) <= 0.02 * len(stored.payload) + 16


@pytest.mark.parametrize("local", [False, True], ids=["full-curves", "local-curves"])
def test_plan_stays_within_the_budget_and_grows_with_it(local, monkeypatch) -> None:
    if local:  # as for a model too expensive to run after every rung
        monkeypatch.setattr(curves, "FULL_CURVES_FLOPS", 0.0)
    model = normalize(tiny_cnn())
    data = tiny_data(n=600, seed=3, labels=False)
    want = None
    sizes = {}
    for budget in (2.0, 10.0):
        ctx = calib_context(data)
        p = search.plan(to_graph(model), ctx.calibration, budget)
        assert p.steps and p.drop + search.margin(p.error, budget) <= budget
        # the plan's steps, fitted as the plan says, give the drop it measured on the held half
        g = to_graph(model)
        run(g, p.steps, Context(p.fit))
        _, held = ctx.calibration.split()
        want = Session(model.SerializeToString()).run(["logits"], held.feeds)[0]
        got = Session(to_model(g).SerializeToString()).run(["logits"], held.feeds)[0]
        assert drop(Metric.AGREEMENT, got, want, None, None) == pytest.approx(p.drop, abs=1e-9)
        sizes[budget] = allocate.predicted(p.curves, p.allocation)[0]
    assert sizes[10.0] <= sizes[2.0]  # more budget, no more bytes


def test_path_passes_through_a_layers_settings_in_between() -> None:
    c = _curve("a", 1.0)
    fitting = {"a": space.Setting(0.0, None)}
    failing = {"a": space.Setting(0.8, 4)}
    path = search._path([c], fitting, failing)
    assert path and failing not in path
    sizes = [c.sizes[p["a"]] for p in path]
    dists = [c.distortion(p["a"]) for p in path]
    assert sizes == sorted(sizes, reverse=True) and dists == sorted(dists)
    assert c.sizes[failing["a"]] < sizes[-1] and sizes[0] < c.sizes[fitting["a"]]


def test_compress_writes_the_chosen_trial_as_a_rerun_of_its_recipe_would(
        tmp_path, tiny_model_path, tiny_data_path) -> None:
    from onnxcompress import compress as job

    original_plan = search.plan
    reports = {}
    for kept in (True, False):
        def planned(*args, kept=kept, **kwargs):
            p = original_plan(*args, **kwargs)
            assert p.outcome  # the chosen trial's run comes with the plan
            if not kept:
                p.outcome = None  # compress must then run the recipe itself
            return p

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(job.search, "plan", planned)
            if kept:
                mp.setattr(job, "run", lambda *a, **k: pytest.fail("the recipe ran again"))
            reports[kept] = job.compress(tiny_model_path, tmp_path / f"{kept}.onnxc",
                                         calib=tiny_data_path, eval_data=tiny_data_path,
                                         max_accuracy_drop=10, measure_latency=False)
    assert (tmp_path / "True.onnxc").read_bytes() == (tmp_path / "False.onnxc").read_bytes()
    assert reports[True].stages == reports[False].stages
    assert reports[True].passes == reports[False].passes


def test_the_mildest_allocation_leaves_free_looking_layers_untouched() -> None:
    """A layer whose every setting measured no distortion (a saturated output) is compressed
    all the way along the frontier but its last, least distorting allocation touches nothing:
    a search whose first trial fails there could only exit 3."""
    free = _curve("free", 1.0)
    free.prune = {s: (0.0, 0.0) for s in free.prune}
    free.cluster = {b: (0.0, 0.0) for b in free.cluster}
    front = allocate.frontier([free, _curve("b", 1.0)])
    assert all(s.untouched for s in front[-1].values())
    assert front[0]["free"] == space.Setting(0.8, 4)


def test_when_every_compressing_trial_fails_the_spared_layers_say_so(monkeypatch) -> None:
    """A model on which any change, however small, measures over the budget end to end (a
    chaotic untrained net): the plan leaves every layer untouched, and the report blames the
    trials, not the curves."""
    monkeypatch.setattr(search.M, "drop", lambda *args: 5.0)
    model = normalize(tiny_cnn())
    ctx = calib_context(tiny_data(n=600, seed=3, labels=False))
    p = search.plan(to_graph(model), ctx.calibration, 1.0)
    assert not p.steps and p.drop == 0.0
    assert any(not t.fits for t in p.trials)
    assert p.spared and all("measured over the budget end to end" in why
                            for why in p.spared.values())
