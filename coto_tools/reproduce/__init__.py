"""Reproduce the CoTo paper's evaluations (arXiv 2506.05713) on a built-in task, LoRA beside
CoTo: ``reproduce(ReproduceConfig(out=...)) -> ReproduceResult``; ``build_report(dirs)``
rebuilds ``report.html`` / ``report.md`` / ``claims.json`` from finished directories."""

from __future__ import annotations

from coto_tools.reproduce.claims import RULE, Row, build_claims, undecidable_claims
from coto_tools.reproduce.config import Preset, ReproduceConfig, TaskSpec, run_name
from coto_tools.reproduce.report import build_report
from coto_tools.reproduce.run import ReproduceResult, reproduce
from coto_tools.reproduce.stats import Paired, detectable, paired_test, seeds_needed

__all__ = [
    "RULE",
    "Paired",
    "Preset",
    "ReproduceConfig",
    "ReproduceResult",
    "Row",
    "TaskSpec",
    "build_claims",
    "build_report",
    "detectable",
    "paired_test",
    "reproduce",
    "run_name",
    "seeds_needed",
    "undecidable_claims",
]
