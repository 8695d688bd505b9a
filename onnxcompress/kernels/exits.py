"""Exit thresholds and placement: the cheapest exit plan whose accuracy loss fits a budget.

E candidate exits, in graph order, each with a confidence s_ik and a prediction per held-out
sample i. With thresholds t (t_k = inf: exit k is not built), sample i leaves at the first k
with s_ik >= t_k, or goes to the end (index E). Its cost, in fractions of the model's FLOPs, is

    c_i = base_k + sum_{j <= k, t_j < inf} head_j        (base_E = 1)

(the backbone up to the cut plus every head evaluated on the way). Each sample's outcome
against the reference r (labels, or the model's own top-1 without labels) is lost (the model
was right and the exit is wrong), gained (the reverse) or unchanged. With L lost and G gained
out of n, the estimated drop in points, with a margin of z standard errors of a paired count,

    drop(t) = 100 (L - G) / n + z * 100 sqrt(L + G) / n,

must stay <= budget while the mean cost is minimized. The search sweeps a Lagrange multiplier
mu (cost + mu max(0, drop)) from drop-averse to cost-hungry; for each mu, coordinate descent
sets one t_k at a time exactly, all n candidate values at once from sorted prefix sums, warm-
started from the previous mu. The cheapest feasible plan seen wins; then each t_k is loosened
as far as the budget allows. Exits left at inf are not placed: placement falls out of the same
search (with at most `max_exits` active).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MUS = np.geomspace(50.0, 0.005, 36)  # cost (fraction of the model) per point of drop
ROUNDS = 4


@dataclass(frozen=True)
class Problem:
    scores: np.ndarray  # (n, E) confidence of each exit's head
    delta: np.ndarray  # (n, E) int8: +1 exit k gains a sample, -1 loses it, 0 no change
    base: np.ndarray  # (E,) backbone cost before each cut (fraction of the model)
    head: np.ndarray  # (E,) cost of evaluating each exit (fraction of the model)
    budget: float  # points
    z: float = 1.5  # margin, in standard errors
    max_exits: int | None = None


@dataclass(frozen=True)
class Plan:
    thresholds: np.ndarray  # (E,), inf = not placed
    exit_of: np.ndarray  # (n,) exit index per sample (E = the end)
    cost: float  # mean cost per sample (fraction of the model's FLOPs)
    lost: int
    gained: int
    drop: float  # estimated drop with the margin, points

    @property
    def active(self) -> list[int]:
        return [k for k, t in enumerate(self.thresholds) if np.isfinite(t)]


def exit_index(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The exit each sample takes (E for the end)."""
    n, e = scores.shape
    out = np.full(n, e)
    for k in range(e - 1, -1, -1):
        out = np.where(scores[:, k] >= thresholds[k], k, out)
    return out


def evaluate(p: Problem, thresholds: np.ndarray) -> Plan:
    n, e = p.scores.shape
    ex = exit_index(p.scores, thresholds)
    heads = np.cumsum(np.where(np.isfinite(thresholds), p.head, 0.0))
    path = np.append(p.base + heads, 1.0 + heads[-1])
    d = np.zeros(n, np.int64)
    early = ex < e
    d[early] = p.delta[np.nonzero(early)[0], ex[early]]
    lost, gained = int((d < 0).sum()), int((d > 0).sum())
    return Plan(thresholds.copy(), ex, float(path[ex].mean()), lost, gained,
                _drop(lost, gained, n, p.z))


def _drop(lost, gained, n: int, z: float):
    return 100.0 * (lost - gained) / n + z * 100.0 * np.sqrt(lost + gained) / n


def search(p: Problem) -> Plan:
    """The cheapest plan within the budget (module docstring); all-inf if none saves."""
    e = p.scores.shape[1]
    best = evaluate(p, np.full(e, np.inf))
    t = np.full(e, np.inf)
    for mu in MUS:
        t = _descend(p, t, mu)
        plan = evaluate(p, t)
        if plan.drop <= p.budget + 1e-9 and plan.cost < best.cost - 1e-12:
            best = plan
    return _loosen(p, best)


def _descend(p: Problem, t: np.ndarray, mu: float) -> np.ndarray:
    t = t.copy()
    for _ in range(ROUNDS):
        changed = False
        for k in range(len(t)):
            new = _best_threshold(p, t, k, lambda cost, drop: cost + mu * np.maximum(drop, 0))
            changed |= new != t[k]
            t[k] = new
        if not changed:
            break
    return t


def _loosen(p: Problem, plan: Plan) -> Plan:
    """Spend what is left of the budget: each threshold as low as it can go, in turn."""
    t = plan.thresholds.copy()
    for _ in range(2):
        for k in range(len(t)):
            t[k] = _best_threshold(
                p, t, k, lambda cost, drop: np.where(drop <= p.budget + 1e-9, cost, np.inf))
    final = evaluate(p, t)
    return final if final.cost <= plan.cost and final.drop <= p.budget + 1e-9 else plan


def _best_threshold(p: Problem, t: np.ndarray, k: int, objective) -> float:
    """t_k minimizing objective(mean cost, drop) with the other thresholds fixed."""
    n, e = p.scores.shape
    others = t.copy()
    others[k] = np.inf
    active = np.isfinite(others)
    if not np.isfinite(t[k]) and p.max_exits is not None and active.sum() >= p.max_exits:
        return np.inf
    ex = exit_index(p.scores, others)
    heads = np.cumsum(np.where(active, p.head, 0.0))
    path = np.append(p.base + heads, 1.0 + heads[-1])
    d = np.zeros(n, np.int64)
    early = ex < e
    d[early] = p.delta[np.nonzero(early)[0], ex[early]]
    cost = path[ex]
    reach = ex > k  # not gone before k: these pay head k, and may leave at k
    fixed_cost = cost.sum()
    lost0, gain0 = int((d < 0).sum()), int((d > 0).sum())
    order = np.nonzero(reach)[0]
    order = order[np.argsort(-p.scores[order, k], kind="stable")]
    s = p.scores[order, k]
    # leaving at k instead of continuing: cost and outcome change per sample
    leave_cost = p.base[k] + (heads[k - 1] if k else 0.0) + p.head[k]
    dcost = np.cumsum(leave_cost - (cost[order] + p.head[k]))
    new = p.delta[order, k].astype(np.int64)
    old = d[order]
    dlost = np.cumsum((new < 0).astype(np.int64) - (old < 0))
    dgain = np.cumsum((new > 0).astype(np.int64) - (old > 0))
    m = len(order)
    # option 0: not placed; option j (1..m): the j most confident reaching samples leave
    costs = np.concatenate([[fixed_cost], fixed_cost + m * p.head[k] + dcost]) / n
    lost = np.concatenate([[lost0], lost0 + dlost])
    gain = np.concatenate([[gain0], gain0 + dgain])
    values = objective(costs, _drop(lost, gain, n, p.z))
    if m:
        ties = np.concatenate([[False], s[:-1] == s[1:], [False]])[1:]  # j splits a tie
        values[1:][ties] = np.inf
    j = int(np.argmin(values))
    if j == 0:
        return np.inf
    return float(s[j - 1] if j == m else (s[j - 1] + s[j]) / 2)
