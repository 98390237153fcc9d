"""Merging LoRA adapters without a base model: factor space (PEFT's semantics) or delta space.

Methods (:class:`MergeMethod`): linear, task-arithmetic (arXiv 2212.04089), ties (arXiv
2306.01708), dare-linear / dare-ties (arXiv 2311.03099), magnitude-prune, cat (exact), svd, and
knots (arXiv 2410.19735). One algorithm per module; :data:`REGISTRY` dispatches.
"""

from __future__ import annotations

from coto_tools.merge.config import (
    KnotsMerge,
    MajoritySign,
    MergeConfig,
    MergeMethod,
    MergeSpace,
    TiesVote,
)
from coto_tools.merge.engine import (
    MergeReport,
    MergeResult,
    default_output,
    merge_adapters,
    merge_files,
)
from coto_tools.merge.registry import REGISTRY, ModuleParts

__all__ = [
    "REGISTRY",
    "KnotsMerge",
    "MajoritySign",
    "MergeConfig",
    "MergeMethod",
    "MergeReport",
    "MergeResult",
    "MergeSpace",
    "ModuleParts",
    "TiesVote",
    "default_output",
    "merge_adapters",
    "merge_files",
]
