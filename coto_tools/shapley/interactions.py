"""Pairwise Faith-Shap interaction indices (Tsai, Yeh & Ravikumar 2023, JMLR 24(94),
arXiv 2203.00870), from the coalitions a Shapley run already evaluated.

Faith-Shap of order 2 (shapiq's ``FSII`` with ``max_order=2``) is the best approximation of the
game by a pairwise model ``g(S) = v(empty) + sum_{i in S} e_i + sum_{i<j in S} e_ij`` under the
Shapley kernel: ``min sum_S mu(|S|) (v(S) - g(S))^2`` with ``mu(s) = 1 / ((n - 1) C(n - 2, s - 1))``
for ``0 < s < n`` and ``g(N) = v(N)`` exactly (shapiq's infinite weight on ``N``; ``g(empty) =
v(empty)`` by construction). ``e_ij < 0``: players i and j stand in for each other (together they
add less than apart: redundant); ``e_ij > 0``: they need each other.

Steps: (1) collect the coalitions: all ``2^n`` for an ``exact`` run, else the run's own samples,
replayed from its seed (costing no evaluation); (2) weight each sampled coalition by
``mu(s) C(n, s) / c(s)``, with ``c(s)`` the expected number of size-``s`` coalitions per sample
(1 per permutation, 2 per antithetic or stratified pair, ``2 p(s)`` per KernelSHAP pair), which
makes the weighted sum an unbiased estimate of the Faith-Shap objective; (3) solve the weighted
least squares under ``sum(e) = v(N) - v(empty)`` (KKT system); (4) standard errors by the
delete-one-sample jackknife (the sandwich estimate of :mod:`.kernelshap` was far too narrow with
fewer samples than parameters, ``n (n + 1) / 2``), t interval with ``samples - 1`` degrees of
freedom. The estimate is consistent, not unbiased; tests/test_shapley_interactions.py measures
the coverage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np

from coto_tools.errors import ShapleyError
from coto_tools.shapley._bits import full_key, keys_to_matrix
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.result import ShapleyResult, interval

REPLAYABLE = ("permutation", "antithetic", "stratified", "kernelshap")


@dataclass(frozen=True)
class Interactions:
    """Order-2 Faith-Shap indices of one game and metric.

    ``first (n,)``: the order-1 terms ``e_i``; ``pairs (n, n)``: ``e_ij`` (symmetric, NaN on the
    diagonal); ``pair_se``, ``pair_low``, ``pair_high`` likewise (zero width when exact);
    ``coalitions``: coalition evaluations used (distinct); ``samples``: sampling units (1 exact).
    """

    first: np.ndarray
    pairs: np.ndarray
    pair_se: np.ndarray
    pair_low: np.ndarray
    pair_high: np.ndarray
    v_empty: float
    v_full: float
    exact: bool
    coalitions: int
    samples: int
    dof: float
    metric: str
    player_names: tuple[str, ...] | None = None

    @property
    def n_players(self) -> int:
        return int(self.first.shape[0])

    def pair_total(self) -> float:
        """``sum_{i<j} e_ij``: negative when the players overlap on the whole (redundant)."""
        iu = np.triu_indices(self.n_players, 1)
        return float(self.pairs[iu].sum())

    def redundancy(self) -> float | None:
        """``-sum_{i<j} e_ij / (v(N) - v(empty))``: the share of the full gain the pairwise
        overlaps take back (0: none; positive: redundant; None when there is no gain)."""
        gain = self.v_full - self.v_empty
        return None if gain == 0 else -self.pair_total() / gain

    def to_dict(self) -> dict[str, Any]:
        names = self.player_names or tuple(str(i) for i in range(self.n_players))
        iu = np.triu_indices(self.n_players, 1)
        return {
            "index": "Faith-Shap (FSII), order 2",
            "metric": self.metric,
            "exact": self.exact,
            "coalitions": self.coalitions,
            "samples": self.samples,
            "interval": "exact" if self.exact else f"95% t, {self.dof:g} dof (jackknife)",
            "v_empty": self.v_empty,
            "v_full": self.v_full,
            "pair_total": self.pair_total(),
            "redundancy": self.redundancy(),
            "first_order": {n: float(v) for n, v in zip(names, self.first, strict=True)},
            "pairs": [
                {
                    "a": names[i],
                    "b": names[j],
                    "value": float(self.pairs[i, j]),
                    "std_error": float(self.pair_se[i, j]),
                    "ci_low": float(self.pair_low[i, j]),
                    "ci_high": float(self.pair_high[i, j]),
                }
                for i, j in zip(*iu, strict=True)
            ],
        }


def fsii_kernel(n_players: int) -> np.ndarray:
    """``mu(s)`` for ``s = 0..n`` (0 at both ends, which are fitted exactly instead)."""
    mu = np.zeros(n_players + 1)
    for s in range(1, n_players):
        mu[s] = 1.0 / ((n_players - 1) * comb(n_players - 2, s - 1))
    return mu


def _features(keys: Sequence[int], n: int) -> np.ndarray:
    x = keys_to_matrix(keys, n).astype(np.float64)
    iu = np.triu_indices(n, 1)
    return np.hstack([x, x[:, iu[0]] * x[:, iu[1]]])


def _solve(a: np.ndarray, b: np.ndarray, delta: float) -> np.ndarray:
    """``argmin beta^T a beta - 2 b^T beta`` s.t. ``1^T beta = delta`` (KKT system, least-squares
    solution when ``a`` is singular)."""
    p = a.shape[0]
    kkt = np.zeros((p + 1, p + 1))
    kkt[:p, :p] = a
    kkt[:p, p] = 1.0
    kkt[p, :p] = 1.0
    return np.linalg.lstsq(kkt, np.concatenate([b, [delta]]), rcond=None)[0][:p]


def fsii_from_samples(
    samples: Sequence[Sequence[int]],
    value: dict[int, float],
    n_players: int,
    weight_of_size: np.ndarray,
    *,
    v_empty: float,
    v_full: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Weighted least squares on sampled coalitions grouped by sampling unit.

    ``samples``: per unit, the coalition keys it drew (``empty`` and ``N`` are skipped);
    ``value[key]``: their values; ``weight_of_size (n + 1,)``: the weight of a size-``s``
    coalition. Returns ``(beta (p,), std_errors (p,), units)`` with ``p = n + n (n - 1) / 2``
    (order 1 first, then pairs in ``np.triu_indices`` order).
    """
    n = n_players
    full = full_key(n)
    feats, ys, ws, unit = [], [], [], []
    for u, keys in enumerate(samples):
        inner = [k for k in keys if k not in (0, full)]
        if not inner:
            continue
        f = _features(inner, n)
        feats.append(f)
        ys.append(np.array([value[k] for k in inner]) - v_empty)
        ws.append(weight_of_size[f[:, :n].sum(axis=1).astype(int)])
        unit.append(np.full(len(inner), u))
    if not feats:
        raise ShapleyError("interactions: no sampled coalition besides the empty and full ones")
    f_all = np.vstack(feats)
    y_all = np.concatenate(ys)
    w_all = np.concatenate(ws)
    u_all = np.concatenate(unit)
    units = np.unique(u_all)
    m = units.size
    a = (f_all * w_all[:, None]).T @ f_all / m
    b = (f_all * w_all[:, None]).T @ y_all / m
    delta = v_full - v_empty
    beta = _solve(a, b, delta)
    p = f_all.shape[1]
    if m < 2:
        return beta, np.full(p, np.nan), m
    # delete-one-unit jackknife: per unit its own share of the normal equations
    idx = np.searchsorted(units, u_all)
    a_u = np.zeros((m, p, p))
    b_u = np.zeros((m, p))
    fw = f_all * w_all[:, None]
    np.add.at(b_u, idx, fw * y_all[:, None])
    for k in range(m):
        rows = idx == k
        a_u[k] = fw[rows].T @ f_all[rows]
    a_sum, b_sum = a * m, b * m
    loo = np.stack(
        [_solve((a_sum - a_u[k]) / (m - 1), (b_sum - b_u[k]) / (m - 1), delta) for k in range(m)]
    )
    var = (m - 1) / m * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0)
    return beta, np.sqrt(var), m


def fsii_exact(table: np.ndarray) -> tuple[np.ndarray, float]:
    """Order-2 Faith-Shap ``beta (p,)`` from ``table (2^n,)`` indexed by coalition bitmask, and
    ``v(empty)``."""
    table = np.asarray(table, dtype=np.float64)
    n = int(round(np.log2(table.size)))
    if table.size != 1 << n or n < 2:
        raise ShapleyError(f"table must have 2^n >= 4 entries, got {table.size}")
    keys = list(range(1, (1 << n) - 1))
    f = _features(keys, n)
    w = fsii_kernel(n)[f[:, :n].sum(axis=1).astype(int)]
    y = table[keys] - table[0]
    beta = _solve((f * w[:, None]).T @ f, (f * w[:, None]).T @ y, table[-1] - table[0])
    return beta, float(table[0])


def expected_counts(estimator: str, n_players: int) -> np.ndarray:
    """``c(s)``, ``s = 0..n``: expected size-``s`` coalitions per sample of ``estimator``."""
    n = n_players
    c = np.zeros(n + 1)
    if estimator == "permutation":
        c[1:n] = 1.0
    elif estimator in ("antithetic", "stratified"):
        c[1:n] = 2.0
    elif estimator == "kernelshap":
        sizes = np.arange(1, n)
        p = 1.0 / (sizes * (n - sizes))
        p /= p.sum()
        c[1:n] = p + p[::-1]
    else:
        raise ShapleyError(
            f"interactions: samples of {estimator!r} cannot be replayed; use one of "
            f"exact, {', '.join(REPLAYABLE)}"
        )
    return c


def replay_samples(result: ShapleyResult, n_players: int) -> list[list[int]]:
    """The coalition keys of every sample ``result`` drew (same seed, same count)."""
    from coto_tools.shapley.kernelshap import KernelShapSampler
    from coto_tools.shapley.permutation import PermutationSampler
    from coto_tools.shapley.stratified import StratifiedSampler

    name = result.estimator
    sampler: Any
    if name in ("permutation", "antithetic"):
        sampler = PermutationSampler(n_players, antithetic=name == "antithetic")
    elif name == "stratified":
        sampler = StratifiedSampler(n_players)
    elif name == "kernelshap":
        sampler = KernelShapSampler(n_players)
    else:
        expected_counts(name, n_players)  # raises the error naming what is allowed
        raise AssertionError("unreachable")
    rng = np.random.default_rng(result.seed)
    return [sampler.draw(rng) for _ in range(result.n_samples)]


def estimate_interactions(
    result: ShapleyResult, cached: CachedGame, metric: str | None = None
) -> Interactions:
    """Order-2 Faith-Shap indices from the coalitions behind ``result`` (no new evaluation).

    ``cached`` must hold them (the cache of the run, or a lookup over its log); ``metric``:
    which stored metric (default ``result.metric``).
    """
    n = result.n_players
    if n < 2:
        raise ShapleyError("interactions need at least 2 players")
    metric = metric or result.metric
    lookup = cached.lookup(metric)
    full = full_key(n)
    iu = np.triu_indices(n, 1)
    if result.estimator == "exact":
        table = lookup.values(list(range(1 << n)))
        beta, v0 = fsii_exact(table)
        se = np.zeros_like(beta)
        dof, samples, coalitions, exact = float("inf"), 1, 1 << n, True
        v_full = float(table[-1])
    else:
        units = replay_samples(result, n)
        keys = sorted({k for u in units for k in u} | {0, full})
        vals = dict(zip(keys, lookup.values(keys), strict=True))
        v0, v_full = vals[0], vals[full]
        mu = fsii_kernel(n)
        counts = expected_counts(result.estimator, n)
        sizes = np.arange(n + 1)
        weight = np.zeros(n + 1)
        ok = counts > 0
        weight[ok] = mu[ok] * np.array([comb(n, int(s)) for s in sizes[ok]]) / counts[ok]
        beta, se, samples = fsii_from_samples(units, vals, n, weight, v_empty=v0, v_full=v_full)
        dof, coalitions, exact = float(samples - 1), len(keys), False
    pairs = np.full((n, n), np.nan)
    pair_se = np.full((n, n), np.nan)
    pairs[iu] = beta[n:]
    pairs[iu[1], iu[0]] = beta[n:]
    pair_se[iu] = se[n:]
    pair_se[iu[1], iu[0]] = se[n:]
    low, high = interval(pairs, pair_se, dof)
    return Interactions(
        first=beta[:n],
        pairs=pairs,
        pair_se=pair_se,
        pair_low=low,
        pair_high=high,
        v_empty=float(v0),
        v_full=float(v_full),
        exact=exact,
        coalitions=coalitions,
        samples=samples,
        dof=dof,
        metric=metric,
        player_names=result.player_names,
    )


def average_interactions(items: Sequence[Interactions]) -> Interactions:
    """The mean of several runs' indices (e.g. one method's seeds), for a figure: values
    averaged; standard errors of the mean over runs (NaN below 2 runs); ``exact`` only if every
    run was exact and there is one run."""
    if not items:
        raise ShapleyError("average_interactions: no interactions given")
    k = len(items)
    pairs = np.mean([i.pairs for i in items], axis=0)
    se = (
        np.std([i.pairs for i in items], axis=0, ddof=1) / np.sqrt(k)
        if k > 1
        else np.full_like(pairs, np.nan)
    )
    low, high = interval(pairs, se, float(k - 1) if k > 1 else float("nan"))
    first = items[0]
    return Interactions(
        first=np.mean([i.first for i in items], axis=0),
        pairs=pairs,
        pair_se=se,
        pair_low=low,
        pair_high=high,
        v_empty=float(np.mean([i.v_empty for i in items])),
        v_full=float(np.mean([i.v_full for i in items])),
        exact=k == 1 and first.exact,
        coalitions=int(sum(i.coalitions for i in items)),
        samples=k,
        dof=float(k - 1),
        metric=first.metric,
        player_names=first.player_names,
    )


def interactions_from_dict(doc: dict[str, Any], names: Sequence[str]) -> Interactions:
    """Rebuild :class:`Interactions` from :meth:`Interactions.to_dict` (e.g. a stage summary)."""
    n = len(names)
    pos = {name: i for i, name in enumerate(names)}
    pairs = np.full((n, n), np.nan)
    se = np.full((n, n), np.nan)
    low = np.full((n, n), np.nan)
    high = np.full((n, n), np.nan)
    for p in doc["pairs"]:
        i, j = pos[p["a"]], pos[p["b"]]
        for arr, key in ((pairs, "value"), (se, "std_error"), (low, "ci_low"), (high, "ci_high")):
            arr[i, j] = arr[j, i] = np.nan if p[key] is None else float(p[key])
    first = np.array([float(doc["first_order"][name]) for name in names])
    dof = float("inf") if doc["exact"] else float(doc["samples"]) - 1.0
    return Interactions(
        first=first,
        pairs=pairs,
        pair_se=se,
        pair_low=low,
        pair_high=high,
        v_empty=float(doc["v_empty"]),
        v_full=float(doc["v_full"]),
        exact=bool(doc["exact"]),
        coalitions=int(doc["coalitions"]),
        samples=int(doc["samples"]),
        dof=dof,
        metric=str(doc["metric"]),
        player_names=tuple(names),
    )
