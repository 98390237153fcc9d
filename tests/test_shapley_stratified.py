"""The default sampler (stratified): its block design, its shared-slope fit, and what it reaches on
the real 12-player adapter tables in benchmarks/data (all 4,096 coalitions evaluated, so the exact
values are known). The comparison with shapiq's approximators is in
benchmarks/results/shapley_estimators_real.txt (too slow for the suite: about 90 s per table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coto_tools.shapley import TableGame, estimate_shapley
from coto_tools.shapley.result import t_quantile
from coto_tools.shapley.stratified import (
    balanced_block,
    paired_row_order,
    pooled_covariate_fit,
)

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"
TABLES = {
    "shapley_table_bbc-topic_qv12.json": 100,  # the stored table: 0.5 x shapiq's best (200)
    "shapley_table_bbc-topic-lora-s0_quick48_qv12.json": 300,
    "shapley_table_bbc-topic-coto-s1_quick48_qv12.json": 300,
}


@pytest.mark.parametrize("rows", [1, 2, 5, 6, 9])
def test_paired_row_order_is_a_permutation_of_the_rows(rows):
    rng = np.random.default_rng(rows)
    for _ in range(5):
        seq = paired_row_order(rows, rng)
        assert sorted(seq) == list(range(rows))
        h = rows // 2
        for t in range(h):  # consecutive rows half a block apart
            assert (seq[2 * t + 1] - seq[2 * t]) % rows == h


def test_two_consecutive_rows_balance_outer_and_middle_classes():
    """12 players: in rows 2t and 2t + 1 of a block every player's two position classes sum
    to 5 ({0, 5}, {1, 4} or {2, 3}): outer with middle, whatever the random swaps."""
    n = 12
    rng = np.random.default_rng(0)
    for _ in range(20):
        block = balanced_block(n, rng)
        for t in range(0, len(block), 2):
            cls = np.empty((2, n), dtype=int)
            for r in range(2):
                pos = np.empty(n, dtype=int)
                pos[block[t + r]] = np.arange(n)
                cls[r] = np.minimum(pos, n - 1 - pos)
            np.testing.assert_array_equal(cls.sum(axis=0), n // 2 - 1)


def test_rows_are_uniform_permutations():
    """Each row on its own is a uniform permutation: player 0's position over many blocks."""
    n, reps = 6, 3000
    rng = np.random.default_rng(1)
    counts = np.zeros((3, n))
    for _ in range(reps):
        block = balanced_block(n, rng)
        for r, order in enumerate(block):
            counts[r, int(np.nonzero(order == 0)[0][0])] += 1
    expected = reps / n
    chi2 = ((counts - expected) ** 2 / expected).sum(axis=1)
    assert np.all(chi2 < 25.0), chi2  # 5 dof: P(chi2 > 25) < 2e-4


def test_pooled_fit_recovers_a_planted_model_and_its_intervals_cover():
    """y_si = a_i + w_i (b1 z1 + b2 z2) + noise: intercepts recovered; the 95% t intervals (m - 1
    dof) cover a_i in 93-97% of 400 draws x 10 players."""
    rng = np.random.default_rng(2)
    n, m = 10, 6
    a = rng.uniform(0.0, 1.0, n)
    w = a.copy()
    inside = []
    for _ in range(400):
        z = rng.normal(size=(m, n, 2))
        noise = rng.normal(scale=0.05, size=(m, n)) * (0.5 + a)
        y = a + w * (0.8 * z[..., 0] - 0.3 * z[..., 1]) + noise
        fit = pooled_covariate_fit(y, z, w, float(a.sum()))
        assert fit is not None
        est, se, dof = fit
        assert dof == m - 1
        inside.extend(np.abs(est - a) <= t_quantile(dof) * se)
    cover = float(np.mean(inside))
    assert 0.93 <= cover <= 0.975, cover


def test_pooled_fit_is_exact_without_noise_and_keeps_efficiency():
    rng = np.random.default_rng(3)
    n, m = 8, 4
    a = rng.uniform(0.0, 1.0, n)
    z = rng.normal(size=(m, n, 2))
    y = a + a * (0.5 * z[..., 0] + 0.2 * z[..., 1])
    est, se, _ = pooled_covariate_fit(y, z, a, float(a.sum()))
    np.testing.assert_allclose(est, a, atol=1e-10)
    np.testing.assert_allclose(se, 0.0, atol=1e-10)
    assert pooled_covariate_fit(y[:1], z[:1], a, float(a.sum())) is None


@pytest.mark.parametrize("table", sorted(TABLES))
def test_default_reaches_the_goal_on_the_real_tables(table):
    """Median relative L2 error over seeds 0-19 <= 0.05 at the goal's budget (the stored table:
    100 evaluations, half of shapiq's best 200; the others: 300) and at a larger one."""
    game = TableGame.load(DATA / table, metric="logprob")
    phi = game.shapley_values()
    for budget in (TABLES[table], 2 * TABLES[table]):
        err = [
            np.linalg.norm(
                estimate_shapley(game, 12, estimator="auto", budget=budget, seed=s).values - phi
            )
            / np.linalg.norm(phi)
            for s in range(20)
        ]
        assert float(np.median(err)) <= 0.05, (budget, np.median(err))


def test_intervals_cover_on_the_real_tables_at_the_default_budget():
    """Pooled over the three tables, 20 seeds and 12 players: coverage >= 0.93 at 300."""
    inside = []
    for table in TABLES:
        game = TableGame.load(DATA / table, metric="logprob")
        phi = game.shapley_values()
        for s in range(20):
            res = estimate_shapley(game, 12, estimator="stratified", budget=300, seed=s)
            inside.extend(np.abs(res.values - phi) <= t_quantile(res.dof) * res.std_errors)
    assert float(np.mean(inside)) >= 0.93
