"""Shapley values with the documents sampled too: ``stratified`` on groups of documents.

A coalition's value is a mean over the split's documents (or tokens), so with the documents cut
into groups ``g`` of weight ``w_g`` (the group's share of the metric's denominator, ``sum w_g =
1``), ``v(S) = sum_g w_g v_g(S)`` and, the Shapley value being linear in the game,
``phi = sum_g w_g phi_g`` exactly. Each group is its own game, estimated by its own
:mod:`~coto_tools.shapley.stratified` sampler (balanced antithetic blocks, shared-slope
covariates, exact efficiency per group, hence exact efficiency of the sum); the antithetic pairs
go to the groups in cycles of a random group order, so every group gets the same number of pairs
up to one; the estimate is ``sum_g w_g phi_g`` and its variance ``sum_g w_g^2 var_g`` (the
groups' samples are independent).

Why it pays: what is left of a pair's noise after the antithetic pairing and the covariates is
mostly *common* to the documents (on the 18-player game of benchmarks/bench_shapley_large.py the
players' per-document deviations are correlated 0.31 across documents: the 48-document mean has
1/3.3 of one document's variance, not 1/48), so a pair run on a twelfth of the documents carries
much of what a pair on all of them carries, at a twelfth of the forward passes. The budget is
counted in *whole-split evaluations*: a group evaluation costs its share of the split's
documents (``costs``), so ``budget=300`` runs as many documents as 300 evaluations of the whole
split. Measured (benchmarks/bench_shapley_documents.py, 20 seeds against a high-budget
reference) in that currency; in wall time a small group is dearer than its share on a CPU (a
forward pass has a fixed cost), which that benchmark measures too.

The groups' documents are dealt round-robin (:meth:`~coto_tools.tasks.base.Task.document_batches`:
document ``i`` to group ``i mod G``), so each group spans the split. Every group's run is a plain
``stratified`` run of its own seed (:func:`group_seed`), so :func:`~coto_tools.shapley.recompute`
and :func:`~coto_tools.shapley.estimate_interactions` work per group unchanged and
:func:`combine_results` / :func:`combine_interactions` weight them together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from coto_tools.errors import ShapleyError
from coto_tools.shapley._bits import full_key
from coto_tools.shapley._sampling import ProgressArg, ProgressInfo, SamplingConfig, _Progress
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.interactions import Interactions
from coto_tools.shapley.result import ConvergenceTrace, ShapleyResult, interval
from coto_tools.shapley.stratified import StratifiedSampler, estimate_stratified

ESTIMATOR = "stratified"
Weights = Sequence[float] | np.ndarray


def two_pairs_budget(n_players: int) -> int:
    """The smallest budget (whole-split evaluations) that gives every group two antithetic pairs,
    whatever the number of groups: v(N) and v(empty) of each group (2 in all) and two pairs of
    ``n - 1`` coalitions each in each group (``4 (n - 1)`` in all). A group's standard error
    needs two pairs."""
    return 2 + 4 * (n_players - 1)


def group_seed(seed: int, group: int, groups: int) -> int:
    """The seed of group ``group``'s own ``stratified`` run (a non-negative int, so the group's
    result can be replayed by :func:`~coto_tools.shapley.recompute`)."""
    state = np.random.SeedSequence([int(seed), int(groups), int(group)]).generate_state(1)
    return int(state[0])


@dataclass(frozen=True)
class GroupedResult:
    """A run over document groups: ``combined`` (the estimate of the whole split's game) and each
    group's own ``stratified`` result, with the groups' ``weights`` (share of the metric's
    denominator) and ``costs`` (share of the split's documents one evaluation runs)."""

    combined: ShapleyResult
    groups: tuple[ShapleyResult, ...]
    weights: np.ndarray
    costs: np.ndarray

    @property
    def group_evaluations(self) -> int:
        """Coalition evaluations over all groups (each of a group's documents only)."""
        return int(sum(r.evaluations for r in self.groups))

    @property
    def split_evaluations(self) -> float:
        """The documents run, in whole-split evaluations (what the budget counts)."""
        return float(sum(c * r.evaluations for c, r in zip(self.costs, self.groups, strict=True)))


def _check_weights(weights: Weights, groups: int, name: str) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (groups,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ShapleyError(f"{name}: {groups} positive finite numbers expected, got {weights!r}")
    return w / w.sum()


def combine_results(
    results: Sequence[ShapleyResult],
    weights: Weights,
    *,
    costs: Weights | None = None,
    trace: ConvergenceTrace | None = None,
    stopped_by: str = "samples",
) -> ShapleyResult:
    """``sum_g w_g phi_g`` of the groups' results, its standard errors
    ``sqrt(sum_g w_g^2 se_g^2)`` with ``sum_g dof_g`` degrees of freedom, efficiency exact (each
    group's is). ``evaluations`` and ``computed`` count whole-split evaluations (each group's
    weighted by its ``costs``, default ``weights``), rounded up."""
    if not results:
        raise ShapleyError("combine_results: no group results")
    w = _check_weights(weights, len(results), "weights")
    c = w if costs is None else _check_weights(costs, len(results), "costs")
    values = np.einsum("g,gi->i", w, np.stack([r.values for r in results]))
    var = np.einsum("g,gi->i", w * w, np.stack([r.std_errors**2 for r in results]))
    se = np.sqrt(var)
    dof = int(sum(r.dof for r in results))
    low, high = interval(values, se, dof)
    first = results[0]
    halves = np.einsum("g,gji->ji", w, np.stack([r.halves for r in results]))
    evaluations = math.ceil(float(np.dot(c, [r.evaluations for r in results])) - 1e-9)
    computed = math.ceil(float(np.dot(c, [r.computed for r in results])) - 1e-9)
    if trace is None:
        trace = ConvergenceTrace(
            samples=np.array([sum(r.n_samples for r in results)]),
            evaluations=np.array([evaluations]),
            estimates=values[None, :],
            std_errors=se[None, :],
        )
    return ShapleyResult(
        values=values,
        std_errors=se,
        ci_low=low,
        ci_high=high,
        evaluations=evaluations,
        computed=computed,
        n_samples=int(sum(r.n_samples for r in results)),
        seed=first.seed,
        estimator=f"{ESTIMATOR}-documents",
        metric=first.metric,
        v_full=float(np.dot(w, [r.v_full for r in results])),
        v_empty=float(np.dot(w, [r.v_empty for r in results])),
        trace=trace,
        halves=halves,
        samples=None,
        player_names=first.player_names,
        stopped_by=stopped_by,
        dof=dof,
    )


def combine_interactions(
    items: Sequence[Interactions], weights: Weights, *, costs: Weights | None = None
) -> Interactions:
    """``sum_g w_g e_g`` of the groups' Faith-Shap indices (linear in the game, as the Shapley
    values), standard errors ``sqrt(sum_g w_g^2 se_g^2)``, ``sum_g dof_g`` degrees of freedom;
    ``coalitions`` in whole-split evaluations (each group's weighted by ``costs``, default
    ``weights``), rounded up, as :func:`combine_results` counts them."""
    if not items:
        raise ShapleyError("combine_interactions: no group interactions")
    w = _check_weights(weights, len(items), "weights")
    c = w if costs is None else _check_weights(costs, len(items), "costs")
    pairs = np.einsum("g,gij->ij", w, np.stack([i.pairs for i in items]))
    se = np.sqrt(np.einsum("g,gij->ij", w * w, np.stack([i.pair_se**2 for i in items])))
    dof = float(sum(i.dof for i in items))
    low, high = interval(pairs, se, dof)
    first = items[0]
    return Interactions(
        first=np.einsum("g,gi->i", w, np.stack([i.first for i in items])),
        pairs=pairs,
        pair_se=se,
        pair_low=low,
        pair_high=high,
        v_empty=float(np.dot(w, [i.v_empty for i in items])),
        v_full=float(np.dot(w, [i.v_full for i in items])),
        exact=all(i.exact for i in items),
        coalitions=math.ceil(float(np.dot(c, [i.coalitions for i in items])) - 1e-9),
        samples=int(sum(i.samples for i in items)),
        dof=dof,
        metric=first.metric,
        player_names=first.player_names,
    )


def estimate_documents(
    games: Sequence[CachedGame],
    weights: Weights,
    cfg: SamplingConfig,
    *,
    costs: Weights | None = None,
    progress: ProgressArg = False,
    player_names: tuple[str, ...] | None = None,
) -> GroupedResult:
    """``stratified`` on each group of documents (``games[g]``: the game on group ``g``'s
    documents, with its own cache and log), pairs to the groups in cycles of a random order.

    ``cfg.budget``: whole-split evaluations (a group evaluation costs ``costs[g]``, default
    ``weights[g]``), v(N) and v(empty) of every group included; ``cfg.permutations=p``: the
    budget ``2 + p (n - 1)`` (what ``p`` permutations of the whole split cost, as for the
    estimators that are not permutation samplers); ``cfg.batch_size``: a quarter of it
    per group of new coalitions are drawn before they are evaluated (each group's in one
    prefix-sharing order: a pair per group at a time would share fewer lower layers);
    ``cfg.tol``: stop once the combined estimate's largest standard error is below ``tol`` times
    the value range, checked after each batch. The sequence of pairs depends only on
    ``cfg.seed`` and the number of groups (and, with ``tol``, on when it stops), so a resumed
    run (the groups' logs) repeats it exactly.
    """
    if len(games) < 2:
        raise ShapleyError("document groups: at least 2 groups are needed")
    n = games[0].n_players
    if any(g.n_players != n for g in games):
        raise ShapleyError("document groups: every group's game must have the same players")
    G = len(games)
    w = _check_weights(weights, G, "weights")
    c = w if costs is None else _check_weights(costs, G, "costs")
    budget = cfg.evaluation_budget(n)
    max_pairs = cfg.samples
    if budget is None and max_pairs is None:
        raise ShapleyError("stratified over document groups: give budget= or permutations=")
    if budget is not None and budget < 2:
        raise ShapleyError(f"budget {budget} < 2 (v(N) and v(empty) alone cost 2)")
    seeds = [group_seed(cfg.seed, g, G) for g in range(G)]
    rngs = [np.random.default_rng(s) for s in seeds]
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), G]))
    samplers = [StratifiedSampler(n) for _ in range(G)]
    full = full_key(n)
    computed0 = [game.n_computed for game in games]
    for game in games:
        game.begin_run()
    firsts = [game.values([0, full]) for game in games]
    for sampler, (v0, v1) in zip(samplers, firsts, strict=True):
        sampler.start(float(v0), float(v1))
    spent = float(np.dot(c, [game.n_evaluations for game in games]))
    bar = _Progress(progress, budget, f"shapley[{ESTIMATOR}, {G} document groups]")
    cycle: list[int] = []
    trace: tuple[list[int], list[int], list[np.ndarray], list[np.ndarray]] = ([], [], [], [])
    next_trace = 1
    stopped_by = "samples"
    done = False
    pairs = 0

    def combined() -> tuple[np.ndarray, np.ndarray]:
        est = np.zeros(n)
        var = np.zeros(n)
        for wg, s in zip(w, samplers, strict=True):
            if s.n_samples == 0:
                return np.full(n, np.nan), np.full(n, np.nan)
            e, se = s.estimate()
            est += wg * e
            var += wg * wg * se * se
        return est, np.sqrt(var)

    try:
        while not done:
            batch: list[tuple[int, list[int], float]] = []
            pending: list[set[int]] = [set() for _ in range(G)]
            batch_cost = 0.0
            while max_pairs is None or pairs + len(batch) < max_pairs:
                if not cycle:
                    cycle = [int(x) for x in rng.permutation(G)]
                g = cycle[0]
                keys = samplers[g].draw(rngs[g])
                new = {k for k in keys if k not in games[g].used and k not in pending[g]}
                cost = len(new) * float(c[g])
                if budget is not None and spent + batch_cost + cost > budget + 1e-9:
                    stopped_by = "budget"
                    done = True
                    break
                cycle.pop(0)
                pending[g] |= new
                batch_cost += cost
                batch.append((g, keys, spent + batch_cost))
                if sum(len(p) for p in pending) >= max(cfg.batch_size, cfg.batch_size * G // 4):
                    break  # a quarter of batch_size per group: each walks one prefix tree
            else:
                done = True
            if not batch:
                break
            for g in range(G):
                if pending[g]:
                    games[g].values(sorted(pending[g]))
            for g, keys, spent_after in batch:
                samplers[g].add(keys, games[g].values(keys))
                pairs += 1
                if pairs >= next_trace and all(s.n_samples for s in samplers):
                    est, se = combined()
                    trace[0].append(pairs)
                    trace[1].append(math.ceil(spent_after - 1e-9))
                    trace[2].append(est)
                    trace[3].append(se)
                    next_trace = max(pairs + 1, math.ceil(pairs * cfg.trace_growth))
            spent = float(np.dot(c, [game.n_evaluations for game in games]))
            est, se = combined()
            max_se = float(np.nanmax(se)) if np.isfinite(se).any() else float("nan")
            bar.update(ProgressInfo(math.ceil(spent - 1e-9), budget, pairs, max_se))
            if cfg.tol is not None and not done and min(s.n_samples for s in samplers) >= 2:
                scale = max(abs(float(np.dot(w, [s.v_full - s.v_empty for s in samplers]))),
                            float(np.ptp(est)))  # fmt: skip
                if scale > 0 and np.isfinite(max_se) and max_se / scale < cfg.tol:
                    stopped_by = "tol"
                    done = True
    finally:
        bar.close()
    short = [g for g, s in enumerate(samplers) if s.n_samples < 2]
    if short:
        limit = f"budget {budget}" if budget is not None else f"{max_pairs} pairs"
        raise ShapleyError(
            f"{limit} is too small for two antithetic pairs in each of the {G} document groups "
            f"of {n} players (a group's standard error needs two; about {two_pairs_budget(n)} "
            "whole-split evaluations are needed: a larger budget, or fewer groups)"
        )
    computed = [game.n_computed - c0 for game, c0 in zip(games, computed0, strict=True)]
    # each group's result from its own seed and pair count (no evaluation: all are cached), so
    # that recompute() and estimate_interactions() replay it like any stratified run
    groups = tuple(
        replace(
            estimate_stratified(
                game,
                SamplingConfig(samples=s.n_samples, seed=seed, batch_size=cfg.batch_size),
                player_names=player_names,
            ),
            computed=k,
        )
        for game, s, seed, k in zip(games, samplers, seeds, computed, strict=True)
    )
    if not trace[0]:  # no trace point yet: the final estimate is the only one
        est, se = combined()
        trace = ([pairs], [math.ceil(spent - 1e-9)], [est], [se])
    final = ConvergenceTrace(
        samples=np.asarray(trace[0]),
        evaluations=np.asarray(trace[1]),
        estimates=np.asarray(trace[2]),
        std_errors=np.asarray(trace[3]),
    )
    result = combine_results(groups, w, costs=c, trace=final, stopped_by=stopped_by)
    return GroupedResult(combined=result, groups=groups, weights=w, costs=c)
