"""Estimator names, their registry, and the one entry point :func:`estimate_shapley`.

Multi-metric design (recompute for another metric from the same samples): every estimator's
sequence of sampled coalitions depends only on ``seed`` and on how many samples it draws, never
on the game's values. :func:`recompute` therefore reruns the result's estimator with the same
seed and exactly ``result.n_samples`` samples against a *lookup* game built from the cache for
another metric (``cached.lookup(metric)``), which answers only from stored coalitions and raises
:class:`ShapleyError` on any coalition that was not evaluated: it costs no game evaluation and
uses precisely the coalitions/permutations of the original run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

from coto_tools.errors import ShapleyError
from coto_tools.shapley._sampling import ProgressArg, SamplingConfig, evaluation_budget
from coto_tools.shapley.antithetic import estimate_antithetic
from coto_tools.shapley.cache import CachedGame, Game
from coto_tools.shapley.exact import EXACT_MAX_PLAYERS, estimate_exact
from coto_tools.shapley.kernelshap import estimate_kernelshap
from coto_tools.shapley.log import EvaluationLog
from coto_tools.shapley.permutation import estimate_permutation
from coto_tools.shapley.result import ShapleyResult
from coto_tools.shapley.stratified import estimate_stratified
from coto_tools.shapley.svarm import estimate_svarm


class Estimator(str, Enum):
    """Shapley estimators; ``auto`` chooses (see :func:`choose_estimator`)."""

    AUTO = "auto"
    EXACT = "exact"
    PERMUTATION = "permutation"
    ANTITHETIC = "antithetic"
    KERNELSHAP = "kernelshap"
    SVARM = "svarm"
    STRATIFIED = "stratified"


EstimatorFn = Callable[..., ShapleyResult]

ESTIMATORS: dict[Estimator, EstimatorFn] = {
    Estimator.EXACT: estimate_exact,
    Estimator.PERMUTATION: estimate_permutation,
    Estimator.ANTITHETIC: estimate_antithetic,
    Estimator.KERNELSHAP: estimate_kernelshap,
    Estimator.SVARM: estimate_svarm,
    Estimator.STRATIFIED: estimate_stratified,
}

AUTO_EXACT_MAX_PLAYERS = 10
"""``auto`` uses ``exact`` up to this many players when no budget forbids it."""

AUTO_SAMPLING = Estimator.STRATIFIED
"""``auto``'s sampling estimator, chosen by benchmarks/bench_shapley_estimators.py on the real
12-player adapter tables in benchmarks/data (all 4,096 coalitions of a CoTo and a LoRA adapter
each, and the CoTo table of the first version): it reached a median relative L2 error of 0.05
in the fewest evaluations on every table, 90 / 130 / 200 against antithetic's 200 / 1000 / 1000
and the best shapiq approximator's 200 / 600 / 700 (median over 20 seeds); on an 18-module-player
game (benchmarks/bench_shapley_large.py, scored against a pooled high-budget reference) 600,
where antithetic and shapiq's best had not reached it at 600 and 1,200. Numbers and commands in
benchmarks/results/shapley_estimators_real.txt. Its 95% t interval covered at least 93% at the
default budget on closed-form games (tests/test_shapley_coverage.py). Adapter runs
(:func:`coto_tools.shapley.run.shapley_run`), whose value is a mean over documents, run it on
groups of documents by default (:mod:`coto_tools.shapley.documents`): 150 instead of 600 on the
18-player game."""


def choose_estimator(n_players: int, budget: int | None) -> Estimator:
    """``exact`` when it is cheap (``2^n <= budget``, or ``n <= 10`` and no budget is given, and
    ``n <= 16``), else :data:`AUTO_SAMPLING`."""
    total = 1 << n_players
    if n_players <= EXACT_MAX_PLAYERS and (
        (budget is not None and total <= budget)
        or (budget is None and n_players <= AUTO_EXACT_MAX_PLAYERS)
    ):
        return Estimator.EXACT
    return AUTO_SAMPLING


def estimate_shapley(
    game: Game | CachedGame,
    n_players: int,
    *,
    estimator: Estimator | str = Estimator.AUTO,
    budget: int | None = None,
    permutations: int | None = None,
    tol: float | None = None,
    seed: int = 0,
    metric: str | None = None,
    log: EvaluationLog | None = None,
    progress: ProgressArg = False,
    batch_size: int = 256,
    player_names: Sequence[str] | None = None,
    samples: int | None = None,
) -> ShapleyResult:
    """Estimate the Shapley values of ``game`` (a callable ``(k, n) bool -> (k,)`` or metric
    dict, or a :class:`CachedGame` to share its cache).

    ``budget``: most distinct coalitions used (v(N), v(empty) included); ``permutations``: budget
    in permutations (see :class:`SamplingConfig`); ``tol``: early stop on
    ``max std error / value range``; ``progress``: ``True`` for a tqdm bar on stderr, or a
    callback receiving :class:`ProgressInfo`. ``log`` (with a ``game``, not a ``CachedGame``)
    resumes from and appends to an evaluation log.
    """
    try:
        choice = Estimator(estimator)
    except ValueError:
        allowed = ", ".join(e.value for e in Estimator)
        raise ShapleyError(f"unknown estimator {estimator!r}; choose one of {allowed}") from None
    cfg = SamplingConfig(
        budget=budget,
        permutations=permutations,
        samples=samples,
        tol=tol,
        seed=seed,
        batch_size=batch_size,
    )
    if isinstance(game, CachedGame):
        if log is not None:
            raise ShapleyError("pass log= to the CachedGame, not with an existing CachedGame")
        if game.n_players != n_players:
            raise ShapleyError(f"CachedGame has {game.n_players} players, not {n_players}")
        if metric is not None and metric != game.metric:
            game = CachedGame(game.game, n_players, metric=metric, store=game.store)
        cached = game
    else:
        cached = CachedGame(game, n_players, metric=metric, log=log)
    names = tuple(player_names) if player_names is not None else None
    if names is not None and len(names) != n_players:
        raise ShapleyError(f"{len(names)} player names for {n_players} players")
    if choice is Estimator.AUTO:
        choice = choose_estimator(n_players, evaluation_budget(n_players, budget, permutations))
    if n_players == 1:
        choice = Estimator.EXACT
    return ESTIMATORS[choice](cached, cfg, progress=progress, player_names=names)


def recompute(result: ShapleyResult, cached: CachedGame, metric: str) -> ShapleyResult:
    """Shapley values for ``metric`` from exactly the coalitions ``result`` sampled.

    Costs no game evaluation: raises :class:`ShapleyError` if a needed coalition is not cached.
    """
    lookup = cached.lookup(metric)
    if result.estimator == Estimator.EXACT.value:
        return estimate_shapley(
            lookup, cached.n_players, estimator=Estimator.EXACT, player_names=result.player_names
        )
    return estimate_shapley(
        lookup,
        cached.n_players,
        estimator=result.estimator,
        samples=result.n_samples,
        seed=result.seed,
        player_names=result.player_names,
    )
