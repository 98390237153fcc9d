"""Permutation sampling (Castro, Gomez & Tejada 2009, doi:10.1016/j.cor.2008.04.004).

Steps as in the paper: (1) draw a permutation ``pi`` of the players uniformly at random;
(2) walk it, adding one player at a time, and record each player's marginal contribution
``v(pre_i(pi) + i) - v(pre_i(pi))``; (3) average the per-permutation contribution vectors.
Each sample is unbiased for the Shapley values, the standard error is the sample standard
deviation over ``sqrt(n_samples)``, and every per-permutation vector sums to
``v(N) - v(empty)``, so the estimate satisfies efficiency exactly (up to rounding).

A permutation costs at most ``n - 1`` new evaluations (its interior coalitions); coalitions
already used (singletons and their complements recur often) are free thanks to the cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coto_tools.shapley._bits import prefix_keys
from coto_tools.shapley._sampling import ProgressArg, SamplingConfig, run_sampler
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.result import ShapleyResult


def marginals(order: np.ndarray, values: np.ndarray, v_empty: float, v_full: float) -> np.ndarray:
    """Each player's marginal contribution along one permutation: ``order`` (n,) the players in
    the order they join, ``values`` (n-1,) the values of its proper non-empty prefixes; returns
    ``(n,)`` indexed by player."""
    chain = np.concatenate(([v_empty], values, [v_full]))
    row = np.empty(len(order))
    row[order] = np.diff(chain)
    return row


class PermutationSampler:
    """Per-sample marginal-contribution vectors; ``antithetic`` pairs each permutation with
    its reverse and makes the pair's mean one sample."""

    def __init__(self, n_players: int, *, antithetic: bool = False) -> None:
        self.n = n_players
        self.antithetic = antithetic
        self.n_samples = 0
        self._rows: list[np.ndarray] = []
        self._orders: list[np.ndarray] = []
        self._sum = np.zeros(n_players)
        self._sumsq = np.zeros(n_players)

    def start(self, v_empty: float, v_full: float) -> None:
        self.v_empty = v_empty
        self.v_full = v_full

    def draw(self, rng: np.random.Generator) -> list[int]:
        order = rng.permutation(self.n)
        self._orders.append(order)
        keys = prefix_keys(order[:-1])
        if self.antithetic:
            keys += prefix_keys(order[::-1][:-1])
        return keys

    def _walk(self, order: np.ndarray, values: np.ndarray) -> np.ndarray:
        return marginals(order, values, self.v_empty, self.v_full)

    def add(self, keys: Sequence[int], values: np.ndarray) -> None:
        order = self._orders[self.n_samples]
        m = self.n - 1
        row = self._walk(order, values[:m])
        if self.antithetic:
            row = 0.5 * (row + self._walk(order[::-1], values[m : 2 * m]))
        self._rows.append(row)
        self._sum += row
        self._sumsq += row * row
        self.n_samples += 1

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.n_samples
        mean = self._sum / m
        if m < 2:
            return mean, np.full(self.n, np.nan)
        var = np.maximum(self._sumsq - m * mean * mean, 0.0) / (m - 1)
        return mean, np.sqrt(var / m)

    def dof(self) -> int:
        """Degrees of freedom of the t interval: samples - 1."""
        return self.n_samples - 1

    def halves(self) -> np.ndarray:
        rows = self.per_sample()
        if rows.shape[0] < 2:
            return np.full((2, self.n), np.nan)
        return np.stack([rows[0::2].mean(axis=0), rows[1::2].mean(axis=0)])

    def per_sample(self) -> np.ndarray:
        return np.asarray(self._rows).reshape(-1, self.n)


def estimate_permutation(
    cached: CachedGame,
    cfg: SamplingConfig,
    *,
    progress: ProgressArg = False,
    player_names: tuple[str, ...] | None = None,
    antithetic: bool = False,
) -> ShapleyResult:
    """Castro et al. permutation sampling; one sample = one permutation (or antithetic pair)."""
    sampler = PermutationSampler(cached.n_players, antithetic=antithetic)
    if cfg.samples is not None:
        max_samples: int | None = cfg.samples
    elif cfg.permutations is not None:
        max_samples = -(-cfg.permutations // 2) if antithetic else cfg.permutations
    else:
        max_samples = None
    return run_sampler(
        cached,
        sampler,
        cfg,
        name="antithetic" if antithetic else "permutation",
        budget=cfg.budget,
        max_samples=max_samples,
        progress=progress,
        player_names=player_names,
        per_sample=sampler.per_sample,
    )
