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
   by ``j``); the rows of a block come in random order and the two players of each class swap at
   random, so each pair is still a uniform permutation and its reverse.
2. *Control variate* (regression estimator, e.g. Glasserman 2004, section 4.1). For player ``i``
   and sample ``s``, ``Y_si`` is the pair's mean marginal contribution and
   ``Z_si = f(pos_si) - mean_k f(k)`` with ``f(k) = ((k - c) / c)^2``, ``c = (n - 1) / 2``, whose
   mean under uniform permutations is 0 exactly. The estimate is the intercept of the least-squares
   line ``Y_i ~ a_i + b_i Z_i``; its standard error is the ordinary one,
   ``s_i^2 (1 / m + mean(Z_i)^2 / S_zz)`` with ``m - 2`` degrees of freedom. After complete blocks
   ``mean(Z_i) = 0`` and the estimate is the plain stratified mean; the line also handles a
   partial last block and a budget that ends mid-block.
3. From 6 samples on, a second covariate: the squared imbalance of the *estimated values*
   before and after the player, ``((W_before - W_after) / W)^2`` centred by its exact mean
   (:func:`weighted_position_covariate`): saturation depends on how much of the game is on,
   not only on how many adapters; ``m - 3`` degrees of freedom. On the two 48-document tables
   it cut the error at 250-300 evaluations by about a third (0.055 -> 0.035); on the stored
   table it changed nothing.

Efficiency: every sample's ``Y_s`` sums to ``v(N) - v(empty)`` and ``sum_i Z_si = 0``, so the gap
``sum_i a_i - (v(N) - v(empty)) = -sum_i b_i mean(Z_i)`` is small; it is removed by the
variance-weighted projection (as in :mod:`.svarm`), which makes efficiency exact and shrinks the
reported standard errors accordingly. On the three real 12-player adapter tables in
benchmarks/data this needs 0.175-0.65x the evaluations of plain antithetic sampling for the
same error (benchmarks/results/shapley_estimators_real.txt).
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
    once), in random row order; each row is marginally a uniform permutation."""
    n = n_players
    base = rng.permutation(n)  # base[p] = player at base position p
    rows, step = (n // 2, 2) if n % 2 == 0 else (n, 1)
    half = n // 2
    block = []
    for j in rng.permutation(rows):
        order = np.empty(n, dtype=np.int64)
        order[(np.arange(n) - step * int(j)) % n] = base
        swap = np.nonzero(rng.random(half) < 0.5)[0]
        order[swap], order[n - 1 - swap] = order[n - 1 - swap], order[swap].copy()
        block.append(order)
    return block


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
        if y.shape[0] < MIN_SAMPLES_WEIGHTED:
            return first
        orders = self._orders[: self.n_samples][idx]
        z2 = weighted_position_covariate(orders, np.maximum(first[0], 0.0))
        if z2 is None:
            return first
        second = multi_covariate_fit(y, np.stack([z, z2], axis=-1), delta)
        return first if second is None else second

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


MIN_SAMPLES_WEIGHTED = 6
"""The weighted-position covariate is fitted from this many samples on (2 covariates + the
intercept leave ``m - 3`` degrees of freedom)."""


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


def multi_covariate_fit(
    y: np.ndarray, z: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Per-player intercepts of ``y[:, i] ~ a_i + z[:, i, :] b_i`` (``z: (m, n, k)``, mean 0 under
    the design), OLS standard errors with ``m - 1 - k`` degrees of freedom, projected onto
    ``sum(a) = delta`` as in :func:`control_variate_fit`. None when some player's design is
    rank-deficient (e.g. all weights equal: the second covariate is the first one rescaled)."""
    m, n, k = z.shape
    if m - 1 - k < 2:
        return None
    a = np.empty(n)
    var = np.empty(n)
    for i in range(n):
        x = np.column_stack([np.ones(m), z[:, i, :]])
        if np.linalg.matrix_rank(x) < k + 1:
            return None
        xtx_inv = np.linalg.inv(x.T @ x)
        beta = xtx_inv @ (x.T @ y[:, i])
        resid = y[:, i] - x @ beta
        a[i] = beta[0]
        var[i] = float(resid @ resid) / (m - 1 - k) * xtx_inv[0, 0]
    a, var = project_efficient(a, np.clip(var, 0.0, None), delta - float(a.sum()))
    return a, np.sqrt(var), m - 1 - k


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
