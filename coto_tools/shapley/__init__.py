"""Shapley values of cooperative games (numpy/scipy only; no torch).

A game is a callable from a bool coalition matrix ``(k, n_players)`` to ``k`` values (or to a
``{metric: (k,)}`` mapping); see :mod:`.cache`. Entry point: :func:`estimate_shapley`; a game
whose value is a mean over documents can be sampled per group of documents with
:func:`estimate_documents` (:mod:`.documents`).
"""

from __future__ import annotations

from coto_tools.shapley._sampling import ProgressInfo, SamplingConfig
from coto_tools.shapley.cache import CachedGame, Game
from coto_tools.shapley.documents import (
    GroupedResult,
    combine_interactions,
    combine_results,
    estimate_documents,
)
from coto_tools.shapley.exact import EXACT_MAX_PLAYERS, shapley_from_table
from coto_tools.shapley.games import (
    AdditiveGame,
    AirportGame,
    MajorityGame,
    SumGame,
    TableGame,
    UnanimityGame,
    WithNullPlayers,
    redundant_adapter_game,
)
from coto_tools.shapley.log import EvaluationLog
from coto_tools.shapley.registry import (
    AUTO_SAMPLING,
    ESTIMATORS,
    Estimator,
    choose_estimator,
    estimate_shapley,
    recompute,
)
from coto_tools.shapley.result import ConvergenceTrace, ShapleyResult, spearman

__all__ = [
    "AUTO_SAMPLING",
    "ESTIMATORS",
    "EXACT_MAX_PLAYERS",
    "AdditiveGame",
    "AirportGame",
    "CachedGame",
    "ConvergenceTrace",
    "Estimator",
    "EvaluationLog",
    "Game",
    "GroupedResult",
    "MajorityGame",
    "ProgressInfo",
    "SamplingConfig",
    "ShapleyResult",
    "SumGame",
    "TableGame",
    "UnanimityGame",
    "WithNullPlayers",
    "choose_estimator",
    "combine_interactions",
    "combine_results",
    "estimate_documents",
    "estimate_shapley",
    "recompute",
    "redundant_adapter_game",
    "shapley_from_table",
    "spearman",
]
