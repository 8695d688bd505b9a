"""Exit heads in pure numpy: pooled features, linear heads distilled from a frozen model, and
the confidence of their predictions.

Features. An activation (n, C, H, W) is average-pooled to a g x g grid with windows that ONNX's
AveragePool reproduces exactly (stride s = H // g, kernel k = H - s (g - 1), no padding), then
flattened channel-major: D = C g^2 features. g = 1 is global average pooling; a (n, D)
activation is used as it is.

Heads are linear, z = f W + b (one Gemm), fitted on standardized features (x = (f - mu) / sd,
folded back into W and b at the end) in one of two ways:

- Regression on the teacher's logits (Ba & Caruana, "Do deep nets really need to be deep?",
  NIPS 2014): min ||X W + 1 b - Z||^2 + lam ||W||^2, solved in closed form from the eigen-
  decomposition G = X^T X = V diag(s) V^T, W = V diag(1 / (s + lam)) V^T X^T Zc. lam is chosen by
  generalized cross-validation (Golub, Heath & Wahba 1979), GCV(lam) = n RSS / (n - df)^2, with
  RSS(lam) = ||Zc||^2 - sum_j ||u_j||^2 (1 - (lam / (s_j + lam))^2), u = diag(s^-1/2) V^T X^T Zc
  and df = 1 + sum_j s_j / (s_j + lam): every lam costs O(D K) once G is decomposed.
- Soft targets (Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", 2015):
  min (1 - a) T^2 CE(softmax(Z / T), softmax(z / T)) + a CE(y, softmax(z)) + lam/2 ||W||^2,
  the second term only with labels y (weight a), by L-BFGS (Nocedal 1980) started from the
  regression solution.

Confidence s(z), larger = surer: max-prob max_j p_j; margin p_(1) - p_(2); entropy
sum_j p_j log p_j = -H(p) (BranchyNet, Teerapittayanon et al. 2016, exits when H is small).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LAM_GRID = np.geomspace(1e-5, 1.0, 16)  # lam / n over standardized features
SOFT_L2 = 1e-4  # lam of the soft-target objective (per-sample mean loss)


@dataclass(frozen=True)
class Head:
    """A fitted linear head on raw (pooled) features: z = f @ weight + bias."""

    weight: np.ndarray  # (D, K) float32
    bias: np.ndarray  # (K,) float32
    lam: float  # the ridge chosen (lam / n)
    method: str  # "logits" | "soft"

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features.astype(np.float64) @ self.weight.astype(np.float64) + self.bias


# ----------------------------------------------------------------------------- features


def grid_geometry(size: int, grid: int) -> tuple[int, int]:
    """(kernel, stride) of the pooling windows that cut `size` into `grid` positions."""
    grid = max(1, min(grid, size))
    stride = size // grid
    return size - stride * (grid - 1), stride


@dataclass(frozen=True)
class HeadShape:
    """How a head reads an activation of per-sample dims (C,), (C, H, W) or other ranks."""

    grid: int  # the grid side asked for (pool_features clamps it to the map)
    cells: tuple[int, int]  # the pooled grid
    pool: tuple[tuple[int, int], tuple[int, int]] | str | None  # (kernel, strides), "global"
    features: int  # D = C * cells
    reads: int  # inputs the pooling reads (an input once per window holding it)


def head_shape(dims: tuple[int, ...], max_features: int, grids: tuple[int, ...],
               grid: int | None = None) -> HeadShape:
    """The head's pooling: the grid of `grids` (or `grid`) with the most cells and at most
    `max_features` features, a grid whose windows overlap counting half (it reads its input
    several times)."""
    c = dims[0]
    if len(dims) == 1:
        return HeadShape(1, (1, 1), None, c, 0)
    if len(dims) != 3:
        return HeadShape(1, (1, 1), "global", c, int(np.prod(dims)))

    def geometry(g: int):
        (kh, sh), (kw, sw) = grid_geometry(dims[1], g), grid_geometry(dims[2], g)
        return (kh, sh, kw, sw), ((dims[1] - kh) // sh + 1, (dims[2] - kw) // sw + 1)

    def score(g: int) -> tuple[float, int]:
        (kh, sh, kw, sw), (gh, gw) = geometry(g)
        return gh * gw * (1.0 if (kh, kw) == (sh, sw) else 0.5), g

    fits = [g for g in grids if c * np.prod(geometry(g)[1]) <= max_features]
    g = grid or (max(fits, key=score) if fits else 1)
    (kh, sh, kw, sw), cells = geometry(g)
    features, reads = c * cells[0] * cells[1], c * cells[0] * cells[1] * kh * kw
    if cells == (1, 1):
        return HeadShape(1, cells, "global", features, int(np.prod(dims)))
    if (kh, kw, sh, sw) == (1, 1, 1, 1):
        return HeadShape(g, cells, None, features, 0)
    return HeadShape(g, cells, ((kh, kw), (sh, sw)), features, reads)


def pool_features(x: np.ndarray, grid: int) -> np.ndarray:
    """(n, D) features of an activation: see the module docstring."""
    n = x.shape[0]
    if x.ndim == 2:
        return np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or grid == 1:
        return x.reshape(n, x.shape[1], -1).mean(axis=2, dtype=np.float64).astype(np.float32)
    (kh, sh), (kw, sw) = grid_geometry(x.shape[2], grid), grid_geometry(x.shape[3], grid)
    gh, gw = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = np.empty((n, x.shape[1], gh, gw), np.float32)
    for i in range(gh):
        for j in range(gw):
            window = x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = window.mean(axis=(2, 3), dtype=np.float64)
    return out.reshape(n, -1)


# ----------------------------------------------------------------------------- fitting


def _standardize(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = f.astype(np.float64)
    mu = f.mean(axis=0)
    sd = f.std(axis=0)
    sd[sd < 1e-8] = 1.0
    return (f - mu) / sd, mu, sd


def _fold(w: np.ndarray, b: np.ndarray, mu: np.ndarray, sd: np.ndarray, lam: float,
          method: str) -> Head:
    weight = w / sd[:, None]
    return Head(weight.astype(np.float32), (b - mu @ weight).astype(np.float32), lam, method)


def fit_logits(features: np.ndarray, teacher: np.ndarray) -> Head:
    """Ridge regression on the teacher's logits, lam by GCV (module docstring); from the
    n x n kernel X X^T instead of X^T X when there are fewer samples than features."""
    x, mu, sd = _standardize(features)
    z = teacher.astype(np.float64)
    z_mean = z.mean(axis=0)
    zc = z - z_mean
    n, d = x.shape
    if n >= d:
        s, v = np.linalg.eigh(x.T @ x)
        proj = v.T @ (x.T @ zc)  # (D, K): sqrt(s_j) u_j
    else:
        s, v = np.linalg.eigh(x @ x.T)
        proj = v.T @ zc  # (n, K): u_j
    s = np.clip(s, 0.0, None)
    keep = s > s.max() * 1e-12
    u2 = np.zeros_like(s)
    u2[keep] = (proj[keep] ** 2).sum(axis=1) / (s[keep] if n >= d else 1.0)
    total = float((zc ** 2).sum())
    best = None
    for a in LAM_GRID:
        lam = a * n
        rss = total - float((u2 * (1.0 - (lam / (s + lam)) ** 2)).sum())
        df = 1.0 + float((s / (s + lam)).sum())
        gcv = n * max(rss, 0.0) / max(n - df, 1.0) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, a)
    lam = best[1] * n
    coef = v @ (proj / (s + lam)[:, None])
    w = coef if n >= d else x.T @ coef
    return _fold(w, z_mean, mu, sd, float(best[1]), "logits")


def fit_soft(features: np.ndarray, teacher: np.ndarray, temperature: float,
             labels: np.ndarray | None = None, label_weight: float = 0.0,
             iterations: int = 100) -> Head:
    """Soft-target distillation (module docstring), started from the logit regression."""
    start = fit_logits(features, teacher)
    x, mu, sd = _standardize(features)
    n, d = x.shape
    k = teacher.shape[1]
    t = float(temperature)
    p_soft = softmax(teacher.astype(np.float64) / t)
    a = label_weight if labels is not None else 0.0
    onehot = np.eye(k)[labels] if labels is not None else None
    xa = np.hstack([x, np.ones((n, 1))])
    penalty = np.ones((d + 1, 1))
    penalty[-1] = 0.0  # no penalty on the bias

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta.reshape(d + 1, k)
        z = xa @ w
        logq_t = log_softmax(z / t)
        value = -(1 - a) * t * t * float((p_soft * logq_t).sum()) / n
        grad_z = (1 - a) * t * (np.exp(logq_t) - p_soft) / n
        if a:
            logq = log_softmax(z)
            value -= a * float((onehot * logq).sum()) / n
            grad_z += a * (np.exp(logq) - onehot) / n
        value += 0.5 * SOFT_L2 * float((penalty * w * w).sum())
        return value, (xa.T @ grad_z + SOFT_L2 * penalty * w).ravel()

    w0 = np.vstack([start.weight.astype(np.float64) * sd[:, None],
                    (start.bias + mu @ start.weight)[None, :]])
    theta = lbfgs(loss, w0.ravel(), iterations).reshape(d + 1, k)
    return _fold(theta[:-1], theta[-1], mu, sd, SOFT_L2, "soft")


def lbfgs(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray,
          iterations: int, memory: int = 10, tol: float = 1e-7) -> np.ndarray:
    """Minimize a smooth function by L-BFGS with Armijo backtracking."""
    x = x0.copy()
    fx, g = fun(x)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(iterations):
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(pairs):
            alpha = rho * float(s @ q)
            alphas.append(alpha)
            q -= alpha * y
        if pairs:
            s, y, _ = pairs[-1]
            q *= float(s @ y) / float(y @ y)
        for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
            q += (alpha - rho * float(y @ q)) * s
        d = -q
        slope = float(g @ d)
        if slope >= 0:
            d, slope, pairs = -g, -float(g @ g), []
        step = 1.0
        while True:
            x_new = x + step * d
            f_new, g_new = fun(x_new)
            if f_new <= fx + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, y = x_new - x, g_new - g
        if float(s @ y) > 1e-12:
            pairs = [*pairs[-(memory - 1):], (s, y, 1.0 / float(s @ y))]
        converged = abs(fx - f_new) <= tol * max(1.0, abs(fx))
        x, fx, g = x_new, f_new, g_new
        if converged or float(np.abs(g).max()) < tol:
            break
    return x


# ----------------------------------------------------------------------------- confidence


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(np.asarray(z, dtype=np.float64)))


def confidence(z: np.ndarray, criterion: str) -> np.ndarray:
    """s(z) per sample, larger = surer (module docstring)."""
    logp = log_softmax(np.asarray(z, dtype=np.float64))
    p = np.exp(logp)
    if criterion == "max-prob":
        return p.max(axis=1)
    if criterion == "margin":
        top = np.partition(p, -2, axis=1)[:, -2:]
        return top[:, 1] - top[:, 0]
    if criterion == "entropy":
        return (p * logp).sum(axis=1)
    raise ValueError(f"unknown criterion '{criterion}'; expected entropy, max-prob or margin")
