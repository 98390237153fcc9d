"""Structured pruning of LoRA adapters (CoTo, arXiv 2506.05713): strategies, fraction sweeps,
rank truncation, and a run over checkpoints with CSVs, figures and a report.

``select_strategy(module_names, "everyother-even")``; ``fraction_sweep(evaluator, ordering,
steps)``; ``rank_truncation(adapter, r)``; ``run_prune(PruneConfig(...)) -> PruneResult``;
``write_outputs(result)`` / ``write_report(result)``; ``write_pruned(ckpt, strategy, out)``.
"""

from __future__ import annotations

from coto_tools.prune.outputs import check_outputs, write_outputs, write_pruned
from coto_tools.prune.rank import RankCurve, rank_grid, rank_sweep, rank_truncation, truncate_module
from coto_tools.prune.report import compare, write_report
from coto_tools.prune.run import (
    CheckpointResult,
    PruneConfig,
    PruneResult,
    StrategyResult,
    prune_checkpoint,
    read_shapley_csv,
    run_prune,
)
from coto_tools.prune.strategies import (
    DEFAULT_STRATEGIES,
    Strategy,
    StrategyKind,
    canonical_kind,
    parse_strategies,
    parse_strategy,
    select_strategy,
    third_layers,
)
from coto_tools.prune.sweeps import (
    SweepCurve,
    SweepOrder,
    auc,
    fraction_sweep,
    normalised_auc,
    relative_auc,
    removal_order,
)

__all__ = [
    "DEFAULT_STRATEGIES",
    "CheckpointResult",
    "PruneConfig",
    "PruneResult",
    "RankCurve",
    "Strategy",
    "StrategyKind",
    "StrategyResult",
    "SweepCurve",
    "SweepOrder",
    "auc",
    "canonical_kind",
    "check_outputs",
    "compare",
    "fraction_sweep",
    "normalised_auc",
    "parse_strategies",
    "parse_strategy",
    "prune_checkpoint",
    "rank_grid",
    "rank_sweep",
    "rank_truncation",
    "read_shapley_csv",
    "relative_auc",
    "removal_order",
    "run_prune",
    "select_strategy",
    "third_layers",
    "truncate_module",
    "write_outputs",
    "write_pruned",
    "write_report",
]
