"""Stratified SVARM (Kolpaczki, Bengs, Muschalik & Huellermeier 2024, arXiv 2302.00736).

Shapley values without marginal contributions: with strata by coalition size ``l``,
``phi_i = (1/n) sum_{l=0}^{n-1} (phi+_{i,l} - phi-_{i,l})`` where ``phi+_{i,l}`` is the mean of
``v(A)`` over coalitions ``A`` of size ``l + 1`` containing ``i`` and ``phi-_{i,l}`` the mean of
``v(A)`` over coalitions of size ``l`` not containing ``i``. One evaluated coalition of size
``s`` updates ``s`` plus-strata and ``n - s`` minus-strata at once.

Steps in the paper's order: (1) *exact* strata: sizes 0, 1, n - 1, n are evaluated exhaustively
(``2n + 2`` evaluations) which fixes ``phi+_{i,0}, phi-_{i,0}, phi-_{i,1}, phi+_{i,n-2},
phi+_{i,n-1}, phi-_{i,n-1}``; (2) *warm-up*: for every size ``s`` in ``2..n-2``, coalitions from a
random permutation cut into blocks so that every player is inside one size-``s`` coalition and
outside another; (3) *sampling*: draw a size ``s`` in ``2..n-2`` and a uniform coalition of that
size, update its strata. Our size distribution is ``P(s) ~ 1 / sqrt(s (n - s))``, which
minimises the summed stratum variance when all strata have equal variance (the paper derives a
similar harmonic-type distribution; this one is ours, not copied).

Standard errors: stratum sample variances over their counts (a stratum with one sample borrows
the pooled variance of its size), summed with weight ``1 / n^2``, covariances ignored.
Efficiency is not built into SVARM; we enforce it by the variance-weighted projection
``phi += var / sum(var) * (v(N) - v(empty) - sum(phi))`` (the least-squares correction under
independent errors) and report the projected standard errors. One sample is one coalition (the
exact stage counts as one sample).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coto_tools.shapley._bits import full_key
from coto_tools.shapley._sampling import (
    ProgressArg,
    SamplingConfig,
    project_efficient,
    run_sampler,
)
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.result import ShapleyResult


class _Strata:
    """Sums, squared sums and counts of plus / minus strata, ``(n_players, n_players + 1)``."""

    def __init__(self, n: int) -> None:
        shape = (n, n + 1)
        self.sum = {sign: np.zeros(shape) for sign in "+-"}
        self.sq = {sign: np.zeros(shape) for sign in "+-"}
        self.cnt = {sign: np.zeros(shape) for sign in "+-"}

    def add(self, members: np.ndarray, value: float) -> None:
        size = int(members.sum())
        for sign, rows, col in (("+", members, size - 1), ("-", ~members, size)):
            self.sum[sign][rows, col] += value
            self.sq[sign][rows, col] += value * value
            self.cnt[sign][rows, col] += 1


class SvarmSampler:
    """Stratified SVARM state (exact strata, warm-up queue, sampled strata for two halves)."""

    def __init__(self, n_players: int) -> None:
        self.n = n_players
        self.n_samples = 0
        self._full = full_key(n_players)
        self._sizes = np.arange(2, n_players - 1)
        if self._sizes.size:
            w = 1.0 / np.sqrt(self._sizes * (n_players - self._sizes))
            self._p = w / w.sum()
        self._queue: list[list[int]] = []
        self._warm_ready = False
        self._halves = (_Strata(n_players), _Strata(n_players))
        self._by_size_vals: dict[int, list[float]] = {}

    def start(self, v_empty: float, v_full: float) -> None:
        self.v_empty = v_empty
        self.v_full = v_full
        n = self.n
        singles = [1 << i for i in range(n)]
        self._queue = [singles + [self._full ^ k for k in singles]]

    def _warm_up(self, rng: np.random.Generator) -> None:
        n = self.n
        for size in self._sizes:
            s = int(size)
            order = rng.permutation(n)
            for start in range(0, n, s):  # each player inside a size-s coalition
                block = [order[(start + t) % n] for t in range(s)]
                self._queue.append([int(sum(1 << int(i) for i in block))])
            order = rng.permutation(n)
            out = n - s
            for start in range(0, n, out):  # each player outside a size-s coalition
                block = [order[(start + t) % n] for t in range(out)]
                self._queue.append([self._full ^ int(sum(1 << int(i) for i in block))])

    def draw(self, rng: np.random.Generator) -> list[int]:
        if not self._queue and not self._warm_ready:
            self._warm_ready = True
            self._warm_up(rng)
        if self._queue:
            return self._queue.pop(0)
        if not self._sizes.size:
            return []
        size = int(rng.choice(self._sizes, p=self._p))
        members = rng.choice(self.n, size=size, replace=False)
        return [int(sum(1 << int(i) for i in members))]

    def add(self, keys: Sequence[int], values: np.ndarray) -> None:
        if self.n_samples == 0:
            self._set_exact(values)
        else:
            for key, value in zip(keys, values, strict=True):
                members = np.array([(key >> i) & 1 for i in range(self.n)], dtype=bool)
                self._halves[self.n_samples % 2].add(members, float(value))
                self._by_size_vals.setdefault(int(members.sum()), []).append(float(value))
        self.n_samples += 1

    def _set_exact(self, values: np.ndarray) -> None:
        n = self.n
        single, minus_one = values[:n], values[n:]
        ex = {sign: np.full((n, n + 1), np.nan) for sign in "+-"}
        ex["+"][:, 0] = single
        ex["-"][:, 0] = self.v_empty
        ex["+"][:, n - 1] = self.v_full
        ex["-"][:, n - 1] = minus_one
        if n >= 2:
            ex["-"][:, 1] = (single.sum() - single) / (n - 1)
            ex["+"][:, n - 2] = (minus_one.sum() - minus_one) / (n - 1)
        self._exact = ex
        self._by_size_vals[1] = list(single)
        self._by_size_vals[n - 1] = self._by_size_vals.get(n - 1, []) + list(minus_one)

    def _fallback(self, size: int) -> tuple[float, float]:
        vals = self._by_size_vals.get(size, [])
        if vals:
            var = float(np.var(vals, ddof=1)) if len(vals) > 1 else 0.0
            return float(np.mean(vals)), var
        frac = size / self.n
        return self.v_empty + frac * (self.v_full - self.v_empty), 0.0

    def _combine(self, parts: Sequence[_Strata]) -> tuple[np.ndarray, np.ndarray]:
        n = self.n
        phi = np.zeros(n)
        var = np.zeros(n)
        for sign, offset, factor in (("+", 1, 1.0), ("-", 0, -1.0)):
            s = np.sum([p.sum[sign] for p in parts], axis=0)[:, :n]
            q = np.sum([p.sq[sign] for p in parts], axis=0)[:, :n]
            c = np.sum([p.cnt[sign] for p in parts], axis=0)[:, :n]
            exact = self._exact[sign][:, :n]
            for ell in range(n):
                size = ell + offset
                if not np.isnan(exact[:, ell]).any():
                    phi += factor * exact[:, ell] / n
                    continue
                pooled_mean, pooled_var = self._fallback(size)
                cnt = c[:, ell]
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = np.where(cnt > 0, s[:, ell] / cnt, pooled_mean)
                    svar = np.where(
                        cnt > 1,
                        (q[:, ell] - cnt * mean * mean) / np.maximum(cnt - 1, 1),
                        pooled_var,
                    )
                    mvar = np.clip(svar, 0.0, None) / np.maximum(cnt, 1)
                phi += factor * mean / n
                var += mvar / (n * n)
        phi, var = project_efficient(phi, var, (self.v_full - self.v_empty) - float(phi.sum()))
        return phi, np.sqrt(var)

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        phi, se = self._combine(self._halves)
        if self.n_samples < 2 and self._sizes.size:
            se = np.full(self.n, np.nan)
        return phi, se

    def dof(self) -> int:
        """Degrees of freedom of the t interval: samples - 1."""
        return self.n_samples - 1

    def halves(self) -> np.ndarray:
        return np.stack([self._combine([h])[0] for h in self._halves])


def estimate_svarm(
    cached: CachedGame,
    cfg: SamplingConfig,
    *,
    progress: ProgressArg = False,
    player_names: tuple[str, ...] | None = None,
) -> ShapleyResult:
    """Stratified SVARM; ``permutations=p`` means the budget ``2 + p (n - 1)``."""
    n = cached.n_players
    budget = cfg.evaluation_budget(n)
    max_samples = cfg.samples
    if n <= 3:  # every stratum is exact: one sample (the exact stage) is the whole estimate
        max_samples = 1
    return run_sampler(
        cached,
        SvarmSampler(n),
        cfg,
        name="svarm",
        budget=budget,
        max_samples=max_samples,
        progress=progress,
        player_names=player_names,
    )
