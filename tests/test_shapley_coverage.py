"""Coverage of the sampling estimators' 95% t intervals on games with closed-form values.

The default budget (300 evaluations) on 12 players: about 16 antithetic pairs, where the t
quantile (2.13 at 15 degrees of freedom) and 1.96 differ. What these tests cannot detect: games
whose marginal contributions are rare large jumps (a majority game's pivot) can be covered by
chance or missed by every draw at small sample counts; coverage is checked here on games shaped
like adapter games (saturating, with high-order unanimity terms), pooled over seeds and players.
"""

from __future__ import annotations

import numpy as np
import pytest

from coto_tools.shapley import (
    AdditiveGame,
    AirportGame,
    SumGame,
    UnanimityGame,
    estimate_shapley,
    redundant_adapter_game,
)
from coto_tools.shapley.result import Z95, t_quantile
from coto_tools.shapley.run import DEFAULT_BUDGET

N = 12


def games() -> dict[str, object]:
    rng = np.random.default_rng(0)
    carriers = [
        (list(rng.choice(N, size=s, replace=False)), float(rng.normal(1.0, 0.5)))
        for s in (1, 1, 1, 2, 2, 3, 3, 4, 5)
    ]
    return {
        "unanimity": UnanimityGame(N, carriers),
        "airport": AirportGame(np.sort(rng.uniform(0.0, 10.0, N))),
        "additive+airport": SumGame(
            AdditiveGame(rng.uniform(0.0, 1.0, N)), AirportGame(np.sort(rng.uniform(0.0, 3.0, N)))
        ),
        "redundant-adapters": redundant_adapter_game(N, 1),
    }


def coverage(estimator: str, game, seeds: int, budget: int = DEFAULT_BUDGET):
    phi = game.shapley_values()
    t_in, z_in = [], []
    for seed in range(seeds):
        res = estimate_shapley(game, N, estimator=estimator, budget=budget, seed=seed)
        err = np.abs(res.values - phi)
        tol = 1e-12 * (1.0 + np.abs(phi))  # an exactly estimated value has a zero-width interval
        t_in.extend(err <= t_quantile(res.dof) * res.std_errors + tol)
        z_in.extend(err <= Z95 * res.std_errors + tol)
    return float(np.mean(t_in)), float(np.mean(z_in))


def test_stratified_coverage_at_default_budget():
    """The default estimator's 95% interval holds the exact value at least 93% of the time
    (pooled over 4 games x 60 seeds x 12 players), and on no game below 90%."""
    per_game = {name: coverage("stratified", g, 60)[0] for name, g in games().items()}
    pooled = float(np.mean(list(per_game.values())))
    assert pooled >= 0.93, per_game
    assert min(per_game.values()) >= 0.90, per_game


def test_stratified_coverage_at_a_small_budget():
    """At 100 evaluations (4 pairs, 3 dof) the pooled coverage is lower but above 0.90 (measured
    0.92); the airport game, whose marginal contributions are rare large jumps, is the weak one
    (measured 0.79 over 60 seeds x 12 players, quoted in the README). What this cannot detect:
    a game whose jumps no draw of 4 pairs meets."""
    per_game = {name: coverage("stratified", g, 60, budget=100)[0] for name, g in games().items()}
    assert float(np.mean(list(per_game.values()))) >= 0.90, per_game
    assert per_game["airport"] < 0.90, per_game  # the README's caveat is still true
    assert min(v for k, v in per_game.items() if k != "airport") >= 0.93, per_game


@pytest.mark.parametrize("estimator", ["permutation", "antithetic"])
def test_t_interval_coverage_at_default_budget(estimator):
    """t quantiles with m - 1 degrees of freedom: at least 0.93 pooled, and never below the
    normal interval's coverage."""
    t_cov, z_cov = zip(*(coverage(estimator, g, 40) for g in games().values()), strict=True)
    assert np.mean(t_cov) >= 0.93, (t_cov, z_cov)
    assert all(t >= z for t, z in zip(t_cov, z_cov, strict=True))


@pytest.mark.parametrize("estimator", ["kernelshap", "svarm"])
def test_t_interval_coverage_regression_and_strata(estimator):
    """The slower estimators, on the two saturating games with fewer seeds (pooled >= 0.90:
    with 2 x 15 x 12 intervals the Monte Carlo error of the pooled coverage is about 0.02)."""
    gs = games()
    cov = [coverage(estimator, gs[k], 15)[0] for k in ("airport", "redundant-adapters")]
    assert np.mean(cov) >= 0.90, cov


def test_interval_uses_the_t_quantile():
    res = estimate_shapley(redundant_adapter_game(N, 0), N, estimator="antithetic", budget=100)
    assert res.dof == res.n_samples - 1
    half = (res.ci_high - res.ci_low) / 2
    np.testing.assert_allclose(half, t_quantile(res.dof) * res.std_errors)
    assert t_quantile(res.dof) > Z95 + 0.1  # a handful of samples: markedly wider than 1.96
    strat = estimate_shapley(redundant_adapter_game(N, 0), N, estimator="stratified", budget=100)
    # the covariates' slopes are shared by all players: each player keeps m - 1 dof
    assert strat.dof == strat.n_samples - 1
    assert strat.to_dict()["interval"] == f"95% t, {strat.dof} dof"
    more = estimate_shapley(redundant_adapter_game(N, 0), N, estimator="stratified", budget=300)
    assert more.dof == more.n_samples - 1
