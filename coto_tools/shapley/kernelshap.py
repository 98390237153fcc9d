"""KernelSHAP with paired sampling and its variance estimate (Covert & Lee 2021, arXiv 2012.01536;
Lundberg & Lee 2017, arXiv 1705.07874).

Steps as in Covert & Lee: (1) draw ``z`` from the Shapley kernel distribution
``p(z) ~ (n - 1) / (C(n, |z|) |z| (n - |z|))``, ``0 < |z| < n`` (a size ``s`` with probability
``~ 1 / (s (n - s))``, then a uniform subset of that size), and pair it with its complement
``1 - z`` (paired sampling); (2) accumulate ``A = mean((z z^T + zc zc^T) / 2)`` and
``b = mean((z (v(z) - v0) + zc (v(zc) - v0)) / 2)``; (3) solve the constrained least-squares
problem ``min phi^T A phi - 2 b^T phi`` s.t. ``1^T phi = v(N) - v(empty)``:
``phi = A^-1 (b - 1 (1^T A^-1 b - (v(N) - v0)) / (1^T A^-1 1))``.

Efficiency holds exactly (it is the constraint). Standard errors: the paper's CLT / sandwich
estimate ``Cov(phi) ~ C Cov_m(A_m phi - b_m) C^T / m`` with
``C = A^-1 - A^-1 1 1^T A^-1 / (1^T A^-1 1)``, using the ``m`` paired samples. The estimator is
consistent (not unbiased) because ``A`` is estimated; with few samples ``A`` can be singular,
and a least-squares (minimum-norm) solution of the KKT system is used. One sample is one pair;
pairs of already-used coalitions cost nothing (sizes 1 and n - 1, which the kernel favours, are
soon all cached).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coto_tools.errors import ShapleyError
from coto_tools.shapley._bits import full_key
from coto_tools.shapley._sampling import ProgressArg, SamplingConfig, run_sampler
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.result import ShapleyResult


class KernelShapSampler:
    """Paired Shapley-kernel samples and the constrained regression on them."""

    def __init__(self, n_players: int) -> None:
        if n_players < 2:
            raise ShapleyError("kernelshap needs at least 2 players")
        self.n = n_players
        self.n_samples = 0
        sizes = np.arange(1, n_players)
        weights = 1.0 / (sizes * (n_players - sizes))
        self._sizes = sizes
        self._p = weights / weights.sum()
        self._full = full_key(n_players)
        self._z: list[np.ndarray] = []
        self._vz: list[tuple[float, float]] = []

    def start(self, v_empty: float, v_full: float) -> None:
        self.v_empty = v_empty
        self.delta = v_full - v_empty

    def draw(self, rng: np.random.Generator) -> list[int]:
        size = int(rng.choice(self._sizes, p=self._p))
        members = rng.choice(self.n, size=size, replace=False)
        key = int(sum(1 << int(i) for i in members))
        return [key, self._full ^ key]

    def add(self, keys: Sequence[int], values: np.ndarray) -> None:
        z = np.zeros(self.n, dtype=bool)
        z[[i for i in range(self.n) if (keys[0] >> i) & 1]] = True
        self._z.append(z)
        self._vz.append((float(values[0]) - self.v_empty, float(values[1]) - self.v_empty))
        self.n_samples += 1

    def _solve(self, idx: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.asarray(self._z, dtype=np.float64).reshape(-1, self.n)[idx]
        vz = np.asarray(self._vz, dtype=np.float64).reshape(-1, 2)[idx]
        m = z.shape[0]
        if m == 0:
            return np.full(self.n, np.nan), np.full(self.n, np.nan)
        zc = 1.0 - z
        a = 0.5 * (z.T @ z + zc.T @ zc) / m
        b_rows = 0.5 * (z * vz[:, :1] + zc * vz[:, 1:])
        b = b_rows.mean(axis=0)
        ones = np.ones(self.n)
        kkt = np.zeros((self.n + 1, self.n + 1))
        kkt[: self.n, : self.n] = a
        kkt[: self.n, self.n] = ones
        kkt[self.n, : self.n] = ones
        rhs = np.concatenate([b, [self.delta]])
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
        phi = sol[: self.n]
        if m < 2:
            return phi, np.full(self.n, np.nan)
        a_inv = np.linalg.pinv(a)
        a_inv_1 = a_inv @ ones
        c = a_inv - np.outer(a_inv_1, a_inv_1) / float(ones @ a_inv_1)
        resid = 0.5 * (z * (z @ phi)[:, None] + zc * (zc @ phi)[:, None]) - b_rows
        cov_r = np.cov(resid, rowvar=False, ddof=1)
        cov = c @ cov_r @ c.T / m
        return phi, np.sqrt(np.clip(np.diag(cov), 0.0, None))

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        return self._solve(slice(None))

    def dof(self) -> int:
        """Degrees of freedom of the t interval: samples - 1."""
        return self.n_samples - 1

    def halves(self) -> np.ndarray:
        if self.n_samples < 2:
            return np.full((2, self.n), np.nan)
        return np.stack([self._solve(slice(0, None, 2))[0], self._solve(slice(1, None, 2))[0]])


def estimate_kernelshap(
    cached: CachedGame,
    cfg: SamplingConfig,
    *,
    progress: ProgressArg = False,
    player_names: tuple[str, ...] | None = None,
) -> ShapleyResult:
    """Paired KernelSHAP; ``permutations=p`` means the budget ``2 + p (n - 1)``."""
    n = cached.n_players
    budget = cfg.evaluation_budget(n)
    return run_sampler(
        cached,
        KernelShapSampler(n),
        cfg,
        name="kernelshap",
        budget=budget,
        max_samples=cfg.samples,
        progress=progress,
        player_names=player_names,
    )
