"""Shapley estimators on games with closed-form values (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from coto_tools.errors import ShapleyError
from coto_tools.shapley import (
    AUTO_SAMPLING,
    AdditiveGame,
    AirportGame,
    CachedGame,
    Estimator,
    MajorityGame,
    SumGame,
    TableGame,
    UnanimityGame,
    WithNullPlayers,
    choose_estimator,
    estimate_shapley,
    recompute,
    redundant_adapter_game,
)
from coto_tools.shapley._bits import keys_to_matrix, matrix_to_keys

SAMPLERS = ["permutation", "antithetic", "kernelshap", "svarm", "stratified"]


class CountingGame:
    """Records every coalition the wrapped game is asked for."""

    def __init__(self, game, n_players=None):
        self.game = game
        self.n_players = n_players or game.n_players
        self.seen: list[int] = []

    def __call__(self, coalitions):
        self.seen.extend(matrix_to_keys(np.atleast_2d(coalitions)))
        return self.game(coalitions)


def closed_form_games():
    return {
        "additive": AdditiveGame([0.5, -1.0, 2.0, 0.0, 3.5], baseline=1.0),
        "unanimity": UnanimityGame(6, [([0, 1], 2.0), ([1, 2, 3], 3.0), ([5], -1.0)]),
        "majority": MajorityGame(7, quota=4),
        "airport": AirportGame([1.0, 3.0, 3.0, 6.0, 10.0]),
        "null": WithNullPlayers(UnanimityGame(4, [([0, 1, 2], 1.5)]), 2),
        "sum": SumGame(AdditiveGame([1.0, 2.0, 0.0, -1.0]), UnanimityGame(4, [([2, 3], 4.0)])),
    }


def test_bits_roundtrip():
    rng = np.random.default_rng(0)
    for n in (3, 62, 70):
        mat = rng.random((20, n)) < 0.5
        assert np.array_equal(keys_to_matrix(matrix_to_keys(mat), n), mat)


@pytest.mark.parametrize("name", list(closed_form_games()))
def test_exact_equals_closed_form(name):
    game = closed_form_games()[name]
    res = estimate_shapley(game, game.n_players, estimator="exact")
    np.testing.assert_allclose(res.values, game.shapley_values(), atol=1e-12)
    assert res.evaluations == 2**game.n_players
    assert np.all(res.std_errors == 0)


def test_airport_closed_form_by_hand():
    # costs 1, 3, 3, 6, 10 over 5 players: shares of increments 1/5, 2/4, 0/3, 3/2, 4/1
    want = [0.2, 0.7, 0.7, 2.2, 6.2]
    np.testing.assert_allclose(AirportGame([1.0, 3.0, 3.0, 6.0, 10.0]).shapley_values(), want)


def test_axioms_exact():
    games = closed_form_games()
    for game in games.values():
        res = estimate_shapley(game, game.n_players, estimator="exact")
        assert res.efficiency_gap() == pytest.approx(0.0, abs=1e-10)
    maj = estimate_shapley(games["majority"], 7, estimator="exact").values
    np.testing.assert_allclose(maj, maj[0])  # symmetry
    null = estimate_shapley(games["null"], 6, estimator="exact").values
    assert np.all(np.abs(null[4:]) < 1e-12) and null[3] == pytest.approx(0.0)  # dummies
    a, u = AdditiveGame([1.0, 2.0, 0.0, -1.0]), UnanimityGame(4, [([2, 3], 4.0)])
    both = estimate_shapley(SumGame(a, u), 4, estimator="exact").values
    parts = [estimate_shapley(g, 4, estimator="exact").values for g in (a, u)]
    np.testing.assert_allclose(both, parts[0] + parts[1], atol=1e-12)  # additivity


@pytest.mark.parametrize("estimator", SAMPLERS)
def test_efficiency_and_null_players(estimator):
    game = WithNullPlayers(UnanimityGame(6, [([0, 1], 2.0), ([2, 3, 4], 3.0), ([5], 1.0)]), 2)
    res = estimate_shapley(game, 8, estimator=estimator, budget=120, seed=3)
    assert abs(res.efficiency_gap()) < 1e-9
    if estimator in ("permutation", "antithetic", "stratified"):  # nulls contribute 0
        assert np.all(res.values[6:] == 0.0) and np.all(res.std_errors[6:] == 0.0)


def test_exact_refuses_large_n_and_small_budget():
    with pytest.raises(ShapleyError, match="16 players"):
        estimate_shapley(AdditiveGame(np.ones(17)), 17, estimator="exact")
    with pytest.raises(ShapleyError, match="budget is 100"):
        estimate_shapley(AdditiveGame(np.ones(8)), 8, estimator="exact", budget=100)


def test_exact_matches_shapiq():
    shapiq = pytest.importorskip("shapiq")
    game = redundant_adapter_game(6, seed=4)
    ours = estimate_shapley(game, 6, estimator="exact").values
    theirs = shapiq.ExactComputer(game, n_players=6)("SV")
    np.testing.assert_allclose(ours, theirs.get_n_order_values(1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("estimator", SAMPLERS)
def test_converges_to_exact(estimator):
    game = redundant_adapter_game(8, seed=1)
    phi = game.shapley_values()
    errs = {}
    for budget in (60, 250):
        e = []
        for seed in range(6):
            res = estimate_shapley(game, 8, estimator=estimator, budget=budget, seed=seed)
            e.append(np.linalg.norm(res.values - phi) / np.linalg.norm(phi))
            if budget == 250:  # >= 30 samples: reported standard errors are honest
                z = np.abs(res.values - phi) / np.maximum(res.std_errors, 1e-12)
                assert z.max() < 5.0, (budget, seed, z)
        errs[budget] = np.mean(e)
    assert errs[250] < 0.75 * errs[60], errs
    assert errs[250] < 0.05, errs


@pytest.mark.parametrize("estimator", ["permutation", "kernelshap"])
def test_interval_coverage(estimator):
    game = redundant_adapter_game(6, seed=2)
    phi = game.shapley_values()
    inside = []
    for seed in range(40):
        res = estimate_shapley(game, 6, estimator=estimator, budget=40, seed=seed)
        inside.extend((res.ci_low <= phi) & (phi <= res.ci_high))
    assert 0.85 <= np.mean(inside) <= 1.0, np.mean(inside)


@pytest.mark.parametrize("estimator", SAMPLERS)
def test_same_seed_same_numbers(estimator):
    game = redundant_adapter_game(9, seed=0)
    a = estimate_shapley(game, 9, estimator=estimator, budget=150, seed=7)
    b = estimate_shapley(game, 9, estimator=estimator, budget=150, seed=7)
    c = estimate_shapley(game, 9, estimator=estimator, budget=150, seed=8)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.std_errors, b.std_errors)
    assert a.evaluations == b.evaluations and a.n_samples == b.n_samples
    assert not np.array_equal(a.values, c.values)


@pytest.mark.parametrize("estimator", SAMPLERS)
@pytest.mark.parametrize("budget", [40, 97, 300])
def test_budget_respected_and_no_duplicates(estimator, budget):
    game = CountingGame(redundant_adapter_game(10, seed=0))
    res = estimate_shapley(game, 10, estimator=estimator, budget=budget, seed=1, batch_size=32)
    assert len(game.seen) == len(set(game.seen)) == res.evaluations == res.computed
    assert res.evaluations <= budget
    assert res.evaluations >= budget - 2 * 10  # stops only when the next sample cannot fit
    assert res.trace.evaluations[-1] == res.evaluations


def test_permutations_budget():
    game = CountingGame(AdditiveGame(np.arange(6.0)))
    res = estimate_shapley(game, 6, estimator="permutation", permutations=5, seed=0)
    assert res.n_samples == 5 and res.samples.shape == (5, 6)
    np.testing.assert_allclose(res.values, np.arange(6.0))
    anti = estimate_shapley(game, 6, estimator="antithetic", permutations=5, seed=0)
    assert anti.n_samples == 3


def test_cache_shared_between_runs_evaluates_nothing_twice():
    game = CountingGame(redundant_adapter_game(8, seed=3))
    cached = CachedGame(game, 8)
    a = estimate_shapley(cached, 8, estimator="permutation", budget=100, seed=0)
    b = estimate_shapley(cached, 8, estimator="permutation", budget=100, seed=0)
    estimate_shapley(cached, 8, estimator="kernelshap", budget=150, seed=0)
    assert len(game.seen) == len(set(game.seen))
    assert b.computed == 0 and b.evaluations == a.evaluations
    assert np.array_equal(a.values, b.values)


@pytest.mark.parametrize("estimator", ["exact", *SAMPLERS])
def test_recompute_other_metric_from_same_samples(estimator):
    base = redundant_adapter_game(7, seed=5)

    def multi(coalitions):
        v = base(coalitions)
        return {"logprob": v, "accuracy": 2.0 * v + 3.0}

    counting = CountingGame(multi, 7)
    cached = CachedGame(counting, 7, metric="logprob")
    res = estimate_shapley(
        cached, 7, estimator=estimator, budget=90 if estimator != "exact" else None, seed=2
    )
    n_calls = len(counting.seen)
    again = recompute(res, cached, "accuracy")
    assert len(counting.seen) == n_calls  # no new evaluation
    assert again.metric == "accuracy" and again.n_samples == res.n_samples
    np.testing.assert_allclose(again.values, 2.0 * res.values, rtol=1e-9, atol=1e-9)


def test_lookup_refuses_unseen_coalition():
    cached = CachedGame(AdditiveGame(np.ones(5)), 5)
    res = estimate_shapley(cached, 5, estimator="permutation", permutations=2, seed=0)
    with pytest.raises(ShapleyError, match="never evaluated"):
        estimate_shapley(cached.lookup("value"), 5, estimator="permutation", permutations=50)
    assert res.n_samples == 2


def test_tol_early_stop_and_progress():
    game = redundant_adapter_game(10, seed=0)
    seen = []
    res = estimate_shapley(
        game,
        10,
        estimator="antithetic",
        budget=1000,
        tol=0.02,
        seed=0,
        progress=seen.append,
        batch_size=20,
    )
    assert res.stopped_by == "tol" and res.evaluations < 1000
    scale = max(res.v_full - res.v_empty, np.ptp(res.values))
    assert res.std_errors.max() / scale < 0.02
    assert seen and all(p.evaluations <= 1000 for p in seen)
    assert seen[-1].evaluations == res.evaluations


def test_trace_and_rank_stability():
    game = redundant_adapter_game(8, seed=0)
    res = estimate_shapley(game, 8, estimator="kernelshap", budget=200, seed=0)
    assert np.all(np.diff(res.trace.evaluations) >= 0)
    assert res.trace.estimates.shape == (res.trace.samples.size, 8)
    np.testing.assert_array_equal(res.trace.estimates[-1], res.values)
    assert -1.0 <= res.rank_stability() <= 1.0


def test_auto_choice():
    assert choose_estimator(8, None) is Estimator.EXACT
    assert choose_estimator(12, 4096) is Estimator.EXACT
    assert choose_estimator(12, 1000) is AUTO_SAMPLING
    assert choose_estimator(20, None) is AUTO_SAMPLING
    res = estimate_shapley(AdditiveGame(np.ones(12)), 12, budget=500)
    assert res.estimator == AUTO_SAMPLING.value and res.evaluations <= 500


def test_bad_requests():
    game = AdditiveGame(np.ones(5))
    with pytest.raises(ShapleyError, match="unknown estimator"):
        estimate_shapley(game, 5, estimator="magic", budget=10)
    with pytest.raises(ShapleyError, match="budget="):
        estimate_shapley(game, 5, estimator="permutation")
    with pytest.raises(ShapleyError, match="too small"):
        estimate_shapley(game, 5, estimator="permutation", budget=4)


def test_table_game_files(tmp_path):
    game = redundant_adapter_game(5, seed=0)
    np.save(tmp_path / "t.npy", game.tables["value"])
    loaded = TableGame.load(tmp_path / "t.npy")
    np.testing.assert_allclose(loaded.shapley_values(), game.shapley_values())
    (tmp_path / "bad.txt").write_text("x")
    with pytest.raises(ShapleyError):
        TableGame.load(tmp_path / "bad.txt")


@pytest.mark.parametrize("n", [2, 3, 7, 12])
def test_stratified_blocks_visit_every_position_class_once(n):
    from coto_tools.shapley.stratified import balanced_block

    rng = np.random.default_rng(0)
    block = balanced_block(n, rng)
    assert len(block) == (n // 2 if n % 2 == 0 else n)
    visits = np.zeros((n, (n + 1) // 2), dtype=int)
    for order in block:
        assert sorted(order.tolist()) == list(range(n))
        for pos, player in enumerate(order):
            visits[player, min(pos, n - 1 - pos)] += 1
    per_class = 1 if n % 2 == 0 else 2  # odd n: each position once, two positions per class
    want = np.full_like(visits, per_class)
    if n % 2:
        want[:, -1] = 1  # the middle position is a class of its own
    np.testing.assert_array_equal(visits, want)


def test_stratified_exact_on_games_of_order_two():
    """Antithetic pairs cancel pairwise terms, so every sample is the Shapley value."""
    game = SumGame(AdditiveGame(np.arange(7.0)), UnanimityGame(7, [([0, 3], 2.0), ([1, 6], -1.5)]))
    res = estimate_shapley(game, 7, estimator="stratified", budget=80, seed=3)
    np.testing.assert_allclose(res.values, game.shapley_values(), atol=1e-12)
    np.testing.assert_allclose(res.std_errors, 0.0, atol=1e-12)
