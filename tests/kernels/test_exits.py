"""The exit-threshold search: budget kept, compute saved, placement, against brute force."""

from __future__ import annotations

import itertools

import numpy as np

from onnxcompress.kernels import exits as X


def _problem(seed=0, n=400, budget=1.0, z=0.0, max_exits=None, wrong=(0.02, 0.01)):
    """Two exits; each head is right except on a share `wrong` of the samples, and less sure
    (lower score) where it is wrong."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.5, 1.0, size=(n, 2))
    delta = np.zeros((n, 2), np.int8)
    for k, w in enumerate(wrong):
        bad = rng.random(n) < w
        delta[bad, k] = -1
        scores[bad, k] *= 0.8
    return X.Problem(scores, delta, np.array([0.1, 0.5]), np.array([0.01, 0.01]), budget, z,
                     max_exits)


def test_exit_index_takes_the_first_exit_that_fires():
    s = np.array([[0.9, 0.9], [0.1, 0.9], [0.1, 0.1]])
    np.testing.assert_array_equal(X.exit_index(s, np.array([0.5, 0.5])), [0, 1, 2])
    np.testing.assert_array_equal(X.exit_index(s, np.array([np.inf, 0.5])), [1, 1, 2])


def test_search_saves_within_the_budget():
    p = _problem()
    plan = X.search(p)
    assert plan.drop <= p.budget + 1e-9 and plan.cost < 0.5
    assert plan.active == [0, 1] or plan.active == [0]
    check = X.evaluate(p, plan.thresholds)
    assert check.cost == plan.cost and check.lost == plan.lost


def test_zero_budget_takes_only_safe_exits():
    p = _problem(budget=0.0)
    plan = X.search(p)
    assert plan.lost == 0 and plan.drop <= 0 and plan.cost < 1.0


def test_margin_makes_it_careful():
    loose, careful = X.search(_problem(z=0.0)), X.search(_problem(z=2.0))
    assert careful.cost >= loose.cost and careful.lost <= loose.lost


def test_an_exit_that_never_pays_is_not_placed():
    p = _problem()
    p = X.Problem(p.scores, p.delta, p.base, np.array([0.01, 0.6]), p.budget)  # exit 1 too dear
    assert X.search(p).active == [0]


def test_max_exits():
    p = _problem(max_exits=1)
    assert len(X.search(p).active) == 1


def test_no_plan_when_every_head_is_wrong():
    p = _problem()
    p = X.Problem(p.scores, -np.ones_like(p.delta), p.base, p.head, 0.5, 0.0)
    plan = X.search(p)
    assert plan.active == [] and plan.cost == 1.0


def test_close_to_brute_force_on_a_small_problem():
    p = _problem(seed=3, n=40, budget=5.0, wrong=(0.15, 0.05))
    plan = X.search(p)
    options = [np.concatenate([[np.inf], np.unique(p.scores[:, k])]) for k in range(2)]
    best = min((X.evaluate(p, np.array(t)) for t in itertools.product(*options)),
               key=lambda r: r.cost if r.drop <= p.budget + 1e-9 else np.inf)
    assert plan.drop <= p.budget + 1e-9
    assert plan.cost <= best.cost + 0.02
