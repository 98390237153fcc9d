"""Fraction sweeps: the metric as adapters are removed one ordering at a time, and its AUC.

A sweep removes the first ``k`` players of an ordering (a player is one module or a group of
modules switched together) for ``k = floor(f·n + 0.5)`` at ``f = 0, 1/steps, ..., 1``
(repeated counts are evaluated once), so it always runs from the unpruned adapter (``k = 0``)
to no adapter at all (``k = n``). The x axis is the fraction actually removed, ``k / n``.

Area under the curve (:func:`auc`): the trapezoid area of the metric over the fraction removed
in ``[0, 1]``. Two normalisations (:func:`normalised_auc`, :func:`relative_auc`):

- ``auc_norm = (AUC - v_empty) / (v_full - v_empty)``, with ``v_full`` the metric at 0 removed
  and ``v_empty`` at 1 removed: 1 when the metric holds ``v_full`` until the last adapter goes,
  0.5 for a straight line, 0 when it falls to ``v_empty`` at once. Valid for any metric
  (loss and log-prob included); ``nan`` when ``v_full == v_empty``.
- ``auc_rel = AUC / v_full``: the mean fraction of the unpruned metric kept over the sweep
  (meaningful for accuracy, not for loss or log-prob).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from coto_tools.adapters.players import Players, make_players
from coto_tools.errors import OptionError
from coto_tools.prune.strategies import keep_count, resolve_players
from coto_tools.tasks.base import Metrics


class GateEvaluator(Protocol):
    """What the sweeps need: metrics with module gates ``{module: 0.0 or 1.0}`` (the run also
    passes ``{(branch, module): gate}`` keys for the rank-truncated branches)."""

    def value(self, gates: Mapping[Any, float]) -> Metrics: ...


class SweepOrder(str, Enum):
    """``shapley-asc``: lowest Shapley value removed first (the most benign order);
    ``shapley-desc``: highest first; ``norm-asc``: smallest ``||ΔW||_F`` first (magnitude
    pruning); ``random``: a seeded random order."""

    shapley_asc = "shapley-asc"
    shapley_desc = "shapley-desc"
    norm_asc = "norm-asc"
    random = "random"


def removal_order(
    module_names: Sequence[str],
    order: SweepOrder | str,
    *,
    shapley: Mapping[str, float] | None = None,
    norms: Mapping[str, float] | None = None,
    seed: int = 0,
    players_map: Mapping[str, str] | None = None,
) -> list[tuple[str, ...]]:
    """Players (tuples of module names) in the order ``order`` removes them. Ties keep the
    players' tower/layer/kind order. ``players_map``: the ``{regex: player}`` map the Shapley
    values were computed with (``--players-map``), if any."""
    o = SweepOrder(order)
    players: Players
    if o in (SweepOrder.shapley_asc, SweepOrder.shapley_desc):
        if shapley is None:
            raise OptionError(f"sweep {o.value} needs Shapley values (--shapley shapley.csv)")
        players = resolve_players(module_names, shapley, players_map=players_map)
        scores = {p.removeprefix("base_model.model."): float(v) for p, v in shapley.items()}
        vals = np.array([scores[p] for p in players.names])
        idx = np.argsort(vals if o is SweepOrder.shapley_asc else -vals, kind="stable")
    elif o is SweepOrder.norm_asc:
        if norms is None:
            raise OptionError("sweep norm-asc needs the adapter's norms")
        players = make_players(module_names, "module")
        idx = np.argsort(np.array([float(norms[p]) for p in players.names]), kind="stable")
    else:
        players = make_players(module_names, "module")
        idx = np.random.default_rng(seed).permutation(len(players))
    return [players.members[int(i)] for i in idx]


def fraction_grid(steps: int) -> np.ndarray:
    """``steps + 1`` target fractions ``0, 1/steps, ..., 1``."""
    if steps < 1:
        raise OptionError(f"--steps {steps}: must be >= 1")
    return np.linspace(0.0, 1.0, steps + 1)


def auc(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Trapezoid area under ``y`` over ``x`` (``x`` increasing; repeated x add nothing)."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or len(xs) < 2:
        raise OptionError(
            f"auc: need two equal 1-D arrays of >= 2 points, got {xs.shape} {ys.shape}"
        )
    if np.any(np.diff(xs) < 0):
        raise OptionError("auc: x must be non-decreasing")
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def normalised_auc(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """``(AUC - y[-1]) / (y[0] - y[-1])`` for a curve over ``[0, 1]`` (see module docstring)."""
    ys = np.asarray(y, dtype=np.float64)
    gap = ys[0] - ys[-1]
    if gap == 0.0:
        return float("nan")
    return (auc(x, ys) - float(ys[-1])) / float(gap)


def relative_auc(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """``AUC / y[0]``: the mean fraction of the unpruned metric kept (``nan`` if ``y[0] == 0``)."""
    y0 = float(np.asarray(y, dtype=np.float64)[0])
    return float("nan") if y0 == 0.0 else auc(x, y) / y0


@dataclass(frozen=True)
class SweepCurve:
    """Metrics after removing the first ``removed[i]`` of ``n_players`` players of an ordering."""

    name: str
    removed: tuple[int, ...]
    n_players: int
    metrics: tuple[Metrics, ...]
    seed: int | None = None

    @property
    def fractions(self) -> np.ndarray:
        return np.asarray(self.removed, dtype=np.float64) / self.n_players

    def values(self, metric: str) -> np.ndarray:
        return np.array([m.get(metric) for m in self.metrics], dtype=np.float64)

    def auc(self, metric: str) -> float:
        return auc(self.fractions, self.values(metric))

    def auc_norm(self, metric: str) -> float:
        return normalised_auc(self.fractions, self.values(metric))

    def auc_rel(self, metric: str) -> float:
        return relative_auc(self.fractions, self.values(metric))


def fraction_sweep(
    evaluator: GateEvaluator,
    ordering: Sequence[str | Sequence[str]],
    steps: int = 10,
    *,
    name: str = "sweep",
    seed: int | None = None,
    progress: bool = False,
) -> SweepCurve:
    """Remove the players of ``ordering`` (module names or groups of them, first removed first)
    in ``steps`` steps from none to all; every module of ``ordering`` is gated 1 or 0."""
    items = [(o,) if isinstance(o, str) else tuple(o) for o in ordering]
    if not items:
        raise OptionError("fraction sweep: empty ordering")
    mods = [m for it in items for m in it]
    if len(set(mods)) != len(mods):
        raise OptionError("fraction sweep: a module appears twice in the ordering")
    n = len(items)
    counts = sorted({keep_count(float(f), n) for f in fraction_grid(steps)})
    metrics = []
    for k in tqdm(counts, desc=name, disable=not progress, leave=False):
        off = {m for it in items[:k] for m in it}
        metrics.append(evaluator.value({m: (0.0 if m in off else 1.0) for m in mods}))
    return SweepCurve(name, tuple(counts), n, tuple(metrics), seed)
