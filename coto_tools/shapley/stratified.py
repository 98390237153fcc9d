"""Position-stratified antithetic permutation sampling with a position control variate.

Antithetic pairs (Mitchell et al. 2022, arXiv 2104.12199, see :mod:`.antithetic`) already
cancel every pairwise interaction exactly: along ``pi`` and ``reversed(pi)`` a player's marginal
contributions of a game of order <= 2 average to its Shapley value. What is left on real adapter
games is mostly the *position* effect (saturation: a player's contribution is large when few
adapters are on, small when most are), which stratification by coalition size removes
(Maleki et al. 2013, arXiv 1306.4265, stratify the marginal contributions by position; here by
the antithetic position class ``{k, n - 1 - k}``). Two steps do it here:

1. *Balanced design.* Permutations come in blocks in which every player visits every position
   class exactly once (``n`` even: ``n / 2`` pairs, a base permutation shifted by ``2 j``, whose
   parity-preserving shifts cover each class ``{k, n - 1 - k}`` once; ``n`` odd: ``n`` pairs, shifts
   by ``j``); the two players of each class swap at random, so each pair is still a uniform
   permutation and its reverse. The rows come in a paired order (two consecutive rows put a
   player about ``n / 2`` positions apart: an outer and a middle class), so a budget that ends
   mid-block still leaves each player's positions nearly balanced.
2. *Control variates* (regression estimator, e.g. Glasserman 2004, section 4.1). For player
   ``i`` and sample ``s``, ``Y_si`` is the pair's mean marginal contribution, and two covariates
   with mean 0 under uniform permutations describe where the player stood:
   ``Z1_si = f(pos_si) - mean_k f(k)`` with ``f(k) = ((k - c) / c)^2``, ``c = (n - 1) / 2`` (how
   many adapters were on before it, folded by the antithetic pair), and ``Z2_si``, the squared
   imbalance of the *estimated values* before and after the player, centred by its exact mean
   (:func:`weighted_position_covariate`: saturation depends on how much of the game is on, not
   only on how many adapters). The estimate is the intercept ``a_i`` of
   ``Y_si ~ a_i + w_i (b1 Z1_si + b2 Z2_si)`` with the slopes ``b1, b2`` shared by all players
   and ``w_i`` the player's size from a first per-player fit (:func:`pooled_covariate_fit`):
   saturation scales a player's position effect by its size, and two shared slopes estimated
   from ``n m`` observations leave each player ``m - 1`` degrees of freedom where per-player
   slopes left ``m - 3``. After complete blocks ``mean(Z1_i) = 0``; the fit handles a partial
   last block and a budget that ends mid-block.

Efficiency: every sample's ``Y_s`` sums to ``v(N) - v(empty)``, so the gap
``sum_i a_i - (v(N) - v(empty))`` is small; it is removed by the variance-weighted projection
(as in :mod:`.svarm`), which makes efficiency exact and shrinks the reported standard errors
accordingly. On the three real 12-player adapter tables in benchmarks/data this reaches relative
L2 error 0.05 (median of 20 seeds) in 90-200 evaluations, 0.22-0.45x the best shapiq
approximator's count (benchmarks/results/shapley_estimators_real.txt); the paired row order and
the shared slopes took the stored table from 130 to 90 evaluations (chosen on 60 seeds,
reported on the benchmark's 20). On a game of 18 module players (q, k, v of 6 layers,
benchmarks/bench_shapley_large.py) it needed 600 evaluations (0.072 at 300), shapiq's best more
than 1,200; a cross-fitted cubic surrogate and herded pairs reached 0.062-0.071 at 300 there
(benchmarks/bench_shapley_variants.py, not adopted). Sampling the documents as well, one
``stratified`` run per group of documents (:mod:`.documents`, the default of adapter runs that
sample), needs about a third of the documents on every game measured
(benchmarks/bench_shapley_documents.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coto_tools.shapley._bits import prefix_keys
from coto_tools.shapley._sampling import (
    ProgressArg,
    SamplingConfig,
    project_efficient,
    run_sampler,
)
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.permutation import marginals
from coto_tools.shapley.result import ShapleyResult


def position_covariate(n_players: int) -> np.ndarray:
    """``f(k) - mean f`` for positions ``k = 0..n-1`` (``(n,)``; all zeros when ``n <= 2``)."""
    if n_players <= 2:
        return np.zeros(n_players)
    c = (n_players - 1) / 2.0
    f = ((np.arange(n_players) - c) / c) ** 2
    return f - f.mean()


def balanced_block(n_players: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One block of permutations in which every player visits every antithetic position class
    ``{k, n - 1 - k}`` exactly once (``n`` even: ``n / 2`` rows; odd: ``n`` rows, each position
    once); each row is marginally a uniform permutation.

    The rows come in a *paired* order (:func:`paired_row_order`): consecutive rows shift every
    player by about ``n / 2`` positions, so after any even number of rows each player has
    visited outer and middle classes in balance, not only after the whole block (a budget that
    ends mid-block is the common case: 4 of the 6 rows of a 12-player block fit in 100
    evaluations)."""
    n = n_players
    base = rng.permutation(n)  # base[p] = player at base position p
    rows, step = (n // 2, 2) if n % 2 == 0 else (n, 1)
    half = n // 2
    block = []
    for j in paired_row_order(rows, rng):
        order = np.empty(n, dtype=np.int64)
        order[(np.arange(n) - step * int(j)) % n] = base
        swap = np.nonzero(rng.random(half) < 0.5)[0]
        order[swap], order[n - 1 - swap] = order[n - 1 - swap], order[swap].copy()
        block.append(order)
    return block


def paired_row_order(rows: int, rng: np.random.Generator) -> list[int]:
    """The rows ``0..rows-1`` of a block in the order ``j0, j0 + h, j0 + 1, j0 + 1 + h, ...``
    (mod ``rows``, ``h = rows // 2``; an odd count ends with the row left over), ``j0`` uniform:
    two consecutive rows put a player about half the permutation apart (an outer and a middle
    position class)."""
    h = rows // 2
    j0 = int(rng.integers(rows)) if rows > 1 else 0
    seq = []
    for t in range(h):
        seq += [(j0 + t) % rows, (j0 + t + h) % rows]
    if rows % 2:
        seq.append((j0 + rows - 1) % rows)
    return seq


class StratifiedSampler:
    """Balanced antithetic pairs; per sample the pair-mean contributions ``Y`` and covariates
    ``Z`` (see the module docstring)."""

    def __init__(self, n_players: int) -> None:
        self.n = n_players
        self.n_samples = 0
        self._f = position_covariate(n_players)
        self._queue: list[np.ndarray] = []
        self._orders: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._z: list[np.ndarray] = []

    def start(self, v_empty: float, v_full: float) -> None:
        self.v_empty = v_empty
        self.v_full = v_full

    def draw(self, rng: np.random.Generator) -> list[int]:
        if not self._queue:
            self._queue = balanced_block(self.n, rng)
        order = self._queue.pop(0)
        self._orders.append(order)
        return prefix_keys(order[:-1]) + prefix_keys(order[::-1][:-1])

    def _walk(self, order: np.ndarray, values: np.ndarray) -> np.ndarray:
        return marginals(order, values, self.v_empty, self.v_full)

    def add(self, keys: Sequence[int], values: np.ndarray) -> None:
        order = self._orders[self.n_samples]
        m = self.n - 1
        y = 0.5 * (self._walk(order, values[:m]) + self._walk(order[::-1], values[m : 2 * m]))
        z = np.empty(self.n)
        z[order] = self._f
        self._y.append(y)
        self._z.append(z)
        self.n_samples += 1

    def _fit(self, idx: slice) -> tuple[np.ndarray, np.ndarray, int]:
        y = np.asarray(self._y).reshape(-1, self.n)[idx]
        z = np.asarray(self._z).reshape(-1, self.n)[idx]
        delta = self.v_full - self.v_empty
        first = control_variate_fit(y, z, delta)
        if y.shape[0] < 2:
            return first
        scale = np.maximum(first[0], 0.0)
        covariates = [z]
        orders = self._orders[: self.n_samples][idx]
        z2 = weighted_position_covariate(orders, scale)
        if z2 is not None:
            covariates.append(z2)
        pooled = pooled_covariate_fit(y, np.stack(covariates, axis=-1), scale, delta)
        return first if pooled is None else pooled

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        est, se, _ = self._fit(slice(None))
        return est, se

    def dof(self) -> int:
        return self._fit(slice(None))[2]

    def halves(self) -> np.ndarray:
        if self.n_samples < 2:
            return np.full((2, self.n), np.nan)
        return np.stack([self._fit(slice(0, None, 2))[0], self._fit(slice(1, None, 2))[0]])


def control_variate_fit(
    y: np.ndarray, z: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-player intercepts of ``y[:, i] ~ a_i + b_i z[:, i]`` (``y, z: (m, n)``, ``z`` with mean
    0 under the sampling design), projected onto ``sum(a) = delta``.

    Returns ``(estimates (n,), std_errors (n,), dof)``: ``dof = m - 2`` with the covariate, or
    ``m - 1`` when it cannot be fitted (``m < 3`` or no spread in ``z``, then the plain mean);
    standard errors are NaN below 2 samples.
    """
    m, n = y.shape
    if m == 0:
        return np.full(n, np.nan), np.full(n, np.nan), 0
    ybar = y.mean(axis=0)
    zbar = z.mean(axis=0)
    zc = z - zbar
    szz = (zc * zc).sum(axis=0)
    scale = np.maximum((z * z).sum(axis=0), 1e-300)
    use = m >= 3 and bool(np.all(szz > 1e-12 * scale))
    if use:
        b = (zc * (y - ybar)).sum(axis=0) / szz
        a = ybar - b * zbar
        resid = y - a - b * z
        s2 = (resid * resid).sum(axis=0) / (m - 2)
        var = s2 * (1.0 / m + zbar * zbar / szz)
        dof = m - 2
    else:
        a = ybar
        var = y.var(axis=0, ddof=1) / m if m >= 2 else np.full(n, np.nan)
        dof = m - 1
    if m < 2:
        return a + (delta - a.sum()) / n, np.full(n, np.nan), dof
    a, var = project_efficient(a, np.clip(var, 0.0, None), delta - float(a.sum()))
    return a, np.sqrt(var), dof


def pooled_covariate_fit(
    y: np.ndarray, z: np.ndarray, scale: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Per-player intercepts of ``y[:, i] ~ a_i + scale_i * z[:, i, :] b`` with slopes ``b``
    (``k`` of them) *shared* by all players (``y: (m, n)``, ``z: (m, n, k)`` with mean 0 under
    the design, ``scale >= 0`` each player's rough size), projected onto ``sum(a) = delta``.

    Saturation scales a player's position effect by the player's size, so one slope per
    covariate for all players is estimated from ``n * m`` observations instead of ``m`` per
    player: at a handful of samples the per-player fits (:func:`control_variate_fit`) spend most
    of their degrees of freedom on slopes. Variance of ``a_i``: ``s_i^2 / m`` (``s_i^2`` the
    player's residual variance, ``m - 1`` degrees of freedom) plus the shared slopes'
    uncertainty through ``scale_i * mean(z_i)`` (heteroscedasticity-robust, HC0). Coverage is
    measured in tests/test_shapley_coverage.py and on the real tables in benchmarks/results.
    None below 2 samples."""
    m, n, k = z.shape
    if m < 2:
        return None
    ybar = y.mean(axis=0)
    zbar = z.mean(axis=0)  # (n, k)
    x = (z - zbar) * scale[None, :, None]  # (m, n, k)
    xf = x.reshape(-1, k)
    yc = (y - ybar).reshape(-1)
    xtx = xf.T @ xf
    xtx_inv = np.linalg.pinv(xtx)
    beta = xtx_inv @ (xf.T @ yc)
    g = zbar * scale[:, None]  # (n, k): how the slopes move each intercept
    a = ybar - g @ beta
    resid = (yc - xf @ beta).reshape(m, n)
    s2 = (resid * resid).sum(axis=0) / (m - 1)
    meat = (xf * (resid.reshape(-1, 1) ** 2)).T @ xf
    cov_b = xtx_inv @ meat @ xtx_inv
    var = s2 / m + np.einsum("ik,kl,il->i", g, cov_b, g)
    a, var = project_efficient(a, np.clip(var, 0.0, None), delta - float(a.sum()))
    return a, np.sqrt(var), m - 1


def weighted_position_covariate(
    orders: Sequence[np.ndarray], weights: np.ndarray
) -> np.ndarray | None:
    """``Z2_si = ((W_before - W_after) / W)^2 - E[...]``: the squared imbalance of the estimated
    values ``weights`` (>= 0) before and after player ``i`` in sample ``s``, centred by its exact
    mean under uniform permutations (``E[s_j s_l] = 1/3`` for ``j != l``, ``s = +-1`` the side of
    ``i`` each other player is on). ``(m, n)``; None when the weights sum to 0.

    Position says how many adapters are on before ``i``; this says how much of the game's value
    is, which is what saturation depends on (``weights`` come from the same samples: a
    covariate chosen by the data, whose effect on the intervals the coverage tests measure)."""
    n = weights.size
    total = float(weights.sum())
    if not total > 0:
        return None
    out = np.empty((len(orders), n))
    for k, order in enumerate(orders):
        cum = np.cumsum(weights[order])
        before = cum - weights[order]
        row = np.empty(n)
        row[order] = (before - (total - cum)) / total
        out[k] = row * row
    others_sq = float((weights * weights).sum()) - weights * weights
    others = total - weights
    mean = (others_sq + (others * others - others_sq) / 3.0) / (total * total)
    return out - mean


def estimate_stratified(
    cached: CachedGame,
    cfg: SamplingConfig,
    *,
    progress: ProgressArg = False,
    player_names: tuple[str, ...] | None = None,
) -> ShapleyResult:
    """Position-stratified antithetic sampling with a control variate; ``permutations=p`` draws
    ``ceil(p / 2)`` pairs (as :func:`~coto_tools.shapley.antithetic.estimate_antithetic`)."""
    sampler = StratifiedSampler(cached.n_players)
    if cfg.samples is not None:
        max_samples: int | None = cfg.samples
    elif cfg.permutations is not None:
        max_samples = -(-cfg.permutations // 2)
    else:
        max_samples = None
    return run_sampler(
        cached,
        sampler,
        cfg,
        name="stratified",
        budget=cfg.budget,
        max_samples=max_samples,
        progress=progress,
        player_names=player_names,
    )
