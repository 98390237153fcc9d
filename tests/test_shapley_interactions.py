"""Pairwise Faith-Shap interactions: exact values against shapiq, sampled ones from a run's own
coalitions (no new evaluation), their intervals, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from coto_tools.errors import ShapleyError
from coto_tools.shapley import (
    AdditiveGame,
    CachedGame,
    SumGame,
    UnanimityGame,
    estimate_shapley,
    redundant_adapter_game,
)
from coto_tools.shapley._bits import matrix_to_keys
from coto_tools.shapley.interactions import estimate_interactions, fsii_exact
from coto_tools.shapley.result import t_quantile

REPLAYABLE = ["permutation", "antithetic", "stratified", "kernelshap"]


class Counting:
    def __init__(self, game, n):
        self.game, self.n_players, self.seen = game, n, []

    def __call__(self, coalitions):
        self.seen.extend(matrix_to_keys(np.atleast_2d(coalitions)))
        return self.game(coalitions)


def exact_pairs(game, n):
    cached = CachedGame(game, n)
    return estimate_interactions(estimate_shapley(cached, n, estimator="exact"), cached)


@pytest.mark.parametrize(
    "game",
    [
        redundant_adapter_game(5, seed=3),
        redundant_adapter_game(6, seed=7),
        UnanimityGame(5, [([0, 1, 2], 2.0), ([3, 4], -1.0), ([1], 0.5)]),
    ],
)
def test_exact_matches_shapiq_fsii(game):
    shapiq = pytest.importorskip("shapiq")
    n = game.n_players
    ours = exact_pairs(game, n)
    theirs = shapiq.ExactComputer(game, n_players=n)("FSII", order=2)
    for i in range(n):
        assert ours.first[i] == pytest.approx(theirs[(i,)], abs=1e-9)
        for j in range(i + 1, n):
            assert ours.pairs[i, j] == pytest.approx(theirs[(i, j)], abs=1e-9)
            assert ours.pairs[j, i] == ours.pairs[i, j]
    assert np.all(np.isnan(np.diag(ours.pairs)))


@pytest.mark.parametrize("estimator", REPLAYABLE)
def test_pairwise_game_is_recovered_from_samples(estimator):
    """A game of order 2 is its own Faith-Shap model: any sample that spans the pairs gives it
    exactly, with zero residual."""
    n = 6
    game = SumGame(
        AdditiveGame([0.5, -1.0, 2.0, 0.0, 1.5, 0.3]),
        UnanimityGame(n, [([0, 1], -0.8), ([2, 3], 1.2), ([1, 5], 0.4)]),
    )
    want = np.zeros((n, n))
    for (i, j), c in {(0, 1): -0.8, (2, 3): 1.2, (1, 5): 0.4}.items():
        want[i, j] = want[j, i] = c
    cached = CachedGame(game, n)
    res = estimate_shapley(cached, n, estimator=estimator, budget=60, seed=1)
    got = estimate_interactions(res, cached)
    iu = np.triu_indices(n, 1)
    np.testing.assert_allclose(got.pairs[iu], want[iu], atol=1e-8)


@pytest.mark.parametrize("estimator", ["antithetic", "stratified"])
def test_sampled_interactions_cost_nothing_converge_and_cover(estimator):
    n = 8
    game = redundant_adapter_game(n, seed=1)
    exact = exact_pairs(game, n)
    iu = np.triu_indices(n, 1)
    errs, inside = {}, []
    for budget in (100, 250):
        e = []
        for seed in range(12):
            counting = Counting(game, n)
            cached = CachedGame(counting, n)
            res = estimate_shapley(cached, n, estimator=estimator, budget=budget, seed=seed)
            before = len(counting.seen)
            inter = estimate_interactions(res, cached)
            assert len(counting.seen) == before  # from the run's own coalitions
            assert inter.coalitions == res.evaluations and inter.samples == res.n_samples
            e.append(np.linalg.norm(inter.pairs[iu] - exact.pairs[iu]))
            if budget == 250:
                half = t_quantile(inter.dof) * inter.pair_se[iu]
                inside.extend(np.abs(inter.pairs[iu] - exact.pairs[iu]) <= half)
                np.testing.assert_allclose(inter.pair_high[iu] - inter.pairs[iu], half)
        errs[budget] = np.mean(e) / np.linalg.norm(exact.pairs[iu])
    assert errs[250] < 0.5 * errs[100] and errs[250] < 0.06, errs
    assert np.mean(inside) >= 0.90, np.mean(inside)


def test_exact_table_helper_and_redundancy_sign():
    # two perfect substitutes: v = 1 if either is on -> e_01 = -1, redundancy = 1
    table = np.array([0.0, 1.0, 1.0, 1.0])
    beta, v0 = fsii_exact(table)
    assert v0 == 0.0 and beta[2] == pytest.approx(-1.0)
    game = UnanimityGame(3, [([0], 1.0), ([1], 1.0), ([0, 1], -1.0)])
    inter = exact_pairs(game, 3)
    assert inter.pairs[0, 1] == pytest.approx(-1.0)
    assert inter.redundancy() == pytest.approx(1.0)
    doc = inter.to_dict()
    assert doc["index"].startswith("Faith-Shap") and len(doc["pairs"]) == 3


def test_refuses_svarm_samples():
    cached = CachedGame(redundant_adapter_game(6, seed=0), 6)
    res = estimate_shapley(cached, 6, estimator="svarm", budget=40, seed=0)
    with pytest.raises(ShapleyError, match="cannot be replayed"):
        estimate_interactions(res, cached)


def test_round_trip_through_json_and_average():
    import json

    from coto_tools.jsonio import dumps_strict
    from coto_tools.shapley.interactions import average_interactions, interactions_from_dict

    names = tuple(str(i) for i in range(5))  # to_dict names unnamed players by index
    a = exact_pairs(redundant_adapter_game(5, seed=1), 5)
    b = exact_pairs(redundant_adapter_game(5, seed=2), 5)
    back = interactions_from_dict(json.loads(dumps_strict(a.to_dict())), names)
    np.testing.assert_array_equal(back.pairs, a.pairs)
    assert back.redundancy() == pytest.approx(a.redundancy()) and back.exact
    mean = average_interactions([a, b])
    np.testing.assert_allclose(mean.pairs, (a.pairs + b.pairs) / 2)
    assert not mean.exact and mean.samples == 2
