"""Exact Shapley values from all 2^n coalitions (Shapley 1953).

``phi_i = sum_{S not containing i} |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S))``, vectorised over
the table of all ``2^n`` values. Refuses more than :data:`EXACT_MAX_PLAYERS` players.
"""

from __future__ import annotations

from math import factorial

import numpy as np

from coto_tools.errors import ShapleyError
from coto_tools.shapley._sampling import ProgressArg, ProgressInfo, SamplingConfig, _Progress
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.result import ConvergenceTrace, ShapleyResult

EXACT_MAX_PLAYERS = 16


def shapley_from_table(table: np.ndarray) -> np.ndarray:
    """Shapley values ``(n,)`` from ``table (2^n,)`` indexed by coalition bitmask."""
    table = np.asarray(table, dtype=np.float64)
    n = int(round(np.log2(table.size)))
    if table.ndim != 1 or table.size != 1 << n:
        raise ShapleyError(f"table must have 2^n entries, got shape {table.shape}")
    masks = np.arange(1 << n, dtype=np.int64)
    sizes = np.zeros(1 << n, dtype=np.int64)
    for i in range(n):
        sizes += (masks >> i) & 1
    weights = np.array(
        [factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)], dtype=np.float64
    )
    phi = np.empty(n)
    for i in range(n):
        without = masks[((masks >> i) & 1) == 0]
        phi[i] = np.sum(weights[sizes[without]] * (table[without | (1 << i)] - table[without]))
    return phi


def estimate_exact(
    cached: CachedGame,
    cfg: SamplingConfig,
    *,
    progress: ProgressArg = False,
    player_names: tuple[str, ...] | None = None,
) -> ShapleyResult:
    """Evaluate all ``2^n`` coalitions (in batches of ``cfg.batch_size``) and apply the formula."""
    n = cached.n_players
    total = 1 << n
    if n > EXACT_MAX_PLAYERS:
        raise ShapleyError(
            f"exact: {n} players means 2^{n} coalitions; exact is limited to "
            f"{EXACT_MAX_PLAYERS} players (use a sampling estimator)"
        )
    if cfg.budget is not None and cfg.budget < total:
        raise ShapleyError(f"exact: needs 2^{n} = {total} evaluations, budget is {cfg.budget}")
    cached.begin_run()
    computed0 = cached.n_computed
    bar = _Progress(progress, total, "shapley[exact]")
    table = np.empty(total)
    try:
        # v(empty) and v(N) first, as for every estimator
        table[[0, total - 1]] = cached.values([0, total - 1])
        inner = list(range(1, total - 1))
        for start in range(0, len(inner), cfg.batch_size):
            chunk = inner[start : start + cfg.batch_size]
            table[chunk] = cached.values(chunk)
            bar.update(ProgressInfo(cached.n_evaluations, total, 1, 0.0))
    finally:
        bar.close()
    phi = shapley_from_table(table)
    zeros = np.zeros(n)
    return ShapleyResult(
        values=phi,
        std_errors=zeros,
        ci_low=phi.copy(),
        ci_high=phi.copy(),
        evaluations=cached.n_evaluations,
        computed=cached.n_computed - computed0,
        n_samples=1,
        seed=int(cfg.seed),
        estimator="exact",
        metric=cached.primary_metric(),
        v_full=float(table[-1]),
        v_empty=float(table[0]),
        trace=ConvergenceTrace(
            samples=np.array([1]),
            evaluations=np.array([total]),
            estimates=phi[None, :],
            std_errors=zeros[None, :],
        ),
        halves=np.full((2, n), np.nan),
        player_names=player_names,
        stopped_by="complete",
    )
