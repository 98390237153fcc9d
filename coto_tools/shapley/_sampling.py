"""The loop shared by all sampling estimators: budget, batching, early stop, trace, progress.

An estimator supplies a *sampler* (draw one sample's coalitions; absorb their values; estimate)
and this loop does the rest. Guarantees, for every sampling estimator:

* v(N) and v(empty) are evaluated first, once;
* a sample is taken only if its new (not yet used in this run) coalitions fit in the budget; the
  first sample that does not fit ends the run, so ``evaluations <= budget`` always holds and the
  sequence of samples depends only on the seed (never on the game values, except through the
  ``tol`` early stop, which is checked after each batch);
* coalitions are sent to the game in batches of about ``batch_size`` new coalitions.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from coto_tools.errors import ShapleyError
from coto_tools.shapley._bits import full_key
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.result import ConvergenceTrace, ShapleyResult, interval


def evaluation_budget(n_players: int, budget: int | None, permutations: int | None) -> int | None:
    """The evaluation budget of a request: ``budget``, capped by ``2 + permutations (n - 1)``
    (what that many permutations can cost at most); ``None`` when neither is given."""
    if permutations is None:
        return budget
    per = 2 + permutations * (n_players - 1)
    return per if budget is None else min(budget, per)


@dataclass(frozen=True)
class SamplingConfig:
    """How much to sample and when to stop.

    ``budget``: maximum distinct coalitions evaluated (v(N), v(empty) included).
    ``permutations``: a budget in permutations; permutation estimators take this many
    permutations (antithetic: half as many pairs), the others get the evaluation budget
    ``2 + permutations * (n - 1)`` that many permutations can cost at most.
    ``samples``: exact number of sampling units (used by :func:`recompute`).
    ``tol``: stop early once ``max(std_errors) / range < tol`` where
    ``range = max(|v(N) - v(empty)|, max(values) - min(values))``, checked after each batch of
    at least ``min_samples`` samples. ``max_samples_factor``: safety cap on samples
    (``factor * budget``) since samples of already-used coalitions cost nothing.
    ``trace_growth``: the convergence trace records a point whenever the sample count has grown
    by this factor (and at least every sample early on; 1.0: every sample).
    """

    budget: int | None = None
    permutations: int | None = None
    samples: int | None = None
    tol: float | None = None
    seed: int = 0
    batch_size: int = 256
    min_samples: int = 8
    max_samples_factor: int = 20
    trace_growth: float = 1.1

    def evaluation_budget(self, n_players: int) -> int | None:
        """:func:`evaluation_budget` of this config (for estimators that are not permutation
        samplers: ``permutations`` is a budget)."""
        return evaluation_budget(n_players, self.budget, self.permutations)

    def __post_init__(self) -> None:
        for name in ("budget", "permutations", "samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ShapleyError(f"{name} must be a positive int or None, got {value!r}")
        if self.tol is not None and not (0.0 < self.tol < 1.0):
            raise ShapleyError(f"tol must be in (0, 1), got {self.tol!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ShapleyError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.batch_size < 1:
            raise ShapleyError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.min_samples < 2:
            raise ShapleyError(f"min_samples must be >= 2, got {self.min_samples}")
        if self.trace_growth < 1.0:
            raise ShapleyError(f"trace_growth must be >= 1, got {self.trace_growth}")
        if self.max_samples_factor < 1:
            raise ShapleyError(f"max_samples_factor must be >= 1, got {self.max_samples_factor}")


@dataclass(frozen=True)
class ProgressInfo:
    """Passed to a progress callback after each batch."""

    evaluations: int
    budget: int | None
    n_samples: int
    max_std_error: float


ProgressArg = bool | Callable[[ProgressInfo], None] | None


class _Progress:
    def __init__(self, progress: ProgressArg, budget: int | None, desc: str) -> None:
        self.callback: Callable[[ProgressInfo], None] | None = None
        self.bar = None
        if callable(progress):
            self.callback = progress
        elif progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=budget, desc=desc, unit="eval", file=sys.stderr)

    def update(self, info: ProgressInfo) -> None:
        if self.callback is not None:
            self.callback(info)
        if self.bar is not None:
            self.bar.n = info.evaluations
            self.bar.set_postfix(samples=info.n_samples, max_se=f"{info.max_std_error:.3g}")

    def advance(self, k: int) -> None:
        """``k`` more coalitions computed within a batch (:meth:`update` then sets the exact
        count of used coalitions after it)."""
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Sampler(Protocol):
    """One sampling estimator's state."""

    n_samples: int

    def start(self, v_empty: float, v_full: float) -> None: ...
    def draw(self, rng: np.random.Generator) -> list[int]: ...
    def add(self, keys: Sequence[int], values: np.ndarray) -> None: ...
    def estimate(self) -> tuple[np.ndarray, np.ndarray]: ...
    def halves(self) -> np.ndarray: ...
    def dof(self) -> int: ...


def project_efficient(
    values: np.ndarray, var: np.ndarray, gap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Make independent per-player estimates sum to ``v(N) - v(∅)``: the shortfall ``gap`` is
    spread in proportion to the players' variances (equal shares when every variance is 0), the
    minimum-variance correction under the sum constraint; each variance shrinks by
    ``var_i² / Σ var``. ``var`` must be non-negative. Returns ``(values, var)``."""
    total = float(var.sum())
    if total > 0:
        return values + var / total * gap, np.clip(var - var * var / total, 0.0, None)
    return values + gap / values.size, var


def run_sampler(
    cached: CachedGame,
    sampler: Sampler,
    cfg: SamplingConfig,
    *,
    name: str,
    budget: int | None,
    max_samples: int | None,
    progress: ProgressArg = False,
    player_names: tuple[str, ...] | None = None,
    per_sample: Callable[[], np.ndarray | None] | None = None,
) -> ShapleyResult:
    """Run ``sampler`` until the budget, the sample count or ``tol`` stops it."""
    n = cached.n_players
    if budget is None and max_samples is None:
        raise ShapleyError(f"{name}: give budget= (evaluations) or permutations=")
    if budget is not None and budget < 2:
        raise ShapleyError(f"{name}: budget {budget} < 2 (v(N) and v(empty) alone cost 2)")
    cap = max_samples if max_samples is not None else cfg.max_samples_factor * int(budget or 0)
    rng = np.random.default_rng(cfg.seed)
    cached.begin_run()
    computed0 = cached.n_computed
    v_empty, v_full = (float(x) for x in cached.values([0, full_key(n)]))
    sampler.start(v_empty, v_full)
    bar = _Progress(progress, budget, f"shapley[{name}]")
    hook = cached.on_computed

    def on_computed(k: int) -> None:  # advance the bar while a batch is computed in pieces
        bar.advance(k)
        if hook is not None:
            hook(k)

    cached.on_computed = on_computed
    trace_s: list[int] = []
    trace_e: list[int] = []
    trace_v: list[np.ndarray] = []
    trace_se: list[np.ndarray] = []
    next_trace = 1
    stopped_by = "samples"
    done = False
    try:
        while not done:
            batch: list[tuple[list[int], int]] = []
            pending: set[int] = set()
            while sampler.n_samples + len(batch) < cap:
                keys = sampler.draw(rng)
                new = {k for k in keys if k not in cached.used and k not in pending}
                if budget is not None and cached.n_evaluations + len(pending) + len(new) > budget:
                    stopped_by = "budget"
                    done = True
                    break
                pending |= new
                batch.append((keys, cached.n_evaluations + len(pending)))
                if len(pending) >= cfg.batch_size:
                    break
            else:
                done = True
            if not batch:
                break
            flat = [k for keys, _ in batch for k in keys]
            values = cached.values(flat)
            pos = 0
            for keys, evals_after in batch:
                sampler.add(keys, values[pos : pos + len(keys)])
                pos += len(keys)
                if sampler.n_samples >= next_trace:
                    est, se = sampler.estimate()
                    trace_s.append(sampler.n_samples)
                    trace_e.append(evals_after)
                    trace_v.append(est)
                    trace_se.append(se)
                    next_trace = max(
                        sampler.n_samples + 1, math.ceil(sampler.n_samples * cfg.trace_growth)
                    )
            est, se = sampler.estimate()
            max_se = float(np.nanmax(se)) if np.isfinite(se).any() else float("nan")
            bar.update(ProgressInfo(cached.n_evaluations, budget, sampler.n_samples, max_se))
            if cfg.tol is not None and sampler.n_samples >= cfg.min_samples and not done:
                scale = max(abs(v_full - v_empty), float(np.ptp(est)))
                if scale > 0 and np.isfinite(max_se) and max_se / scale < cfg.tol:
                    stopped_by = "tol"
                    done = True
    finally:
        cached.on_computed = hook
        bar.close()
    if sampler.n_samples == 0:
        raise ShapleyError(
            f"{name}: budget {budget} is too small for a single sample of {n} players"
        )
    est, se = sampler.estimate()
    if not trace_s or trace_s[-1] != sampler.n_samples:
        trace_s.append(sampler.n_samples)
        trace_e.append(cached.n_evaluations)
        trace_v.append(est)
        trace_se.append(se)
    dof = sampler.dof()
    low, high = interval(est, se, dof)
    return ShapleyResult(
        values=est,
        std_errors=se,
        ci_low=low,
        ci_high=high,
        evaluations=cached.n_evaluations,
        computed=cached.n_computed - computed0,
        n_samples=sampler.n_samples,
        seed=int(cfg.seed),
        estimator=name,
        metric=cached.primary_metric(),
        v_full=v_full,
        v_empty=v_empty,
        trace=ConvergenceTrace(
            samples=np.asarray(trace_s),
            evaluations=np.asarray(trace_e),
            estimates=np.asarray(trace_v),
            std_errors=np.asarray(trace_se),
        ),
        halves=sampler.halves(),
        samples=per_sample() if per_sample is not None else None,
        player_names=player_names,
        stopped_by=stopped_by,
        dof=dof,
    )
