"""The one dispatch table: :class:`MergeMethod` -> how to merge one module in each space.

``factor`` functions combine same-shaped tensors (the A's, then the B's: PEFT's semantics);
``delta`` functions take one module's LoRA parts and return re-factored ``(A, B, energy kept)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from coto_tools.merge.cat import cat
from coto_tools.merge.config import MergeConfig, MergeMethod, TiesVote
from coto_tools.merge.dare import dare_linear, dare_ties
from coto_tools.merge.knots import knots
from coto_tools.merge.magnitude import magnitude_prune
from coto_tools.merge.svd import lowrank_svd, truncated_svd
from coto_tools.merge.task_arithmetic import task_arithmetic
from coto_tools.merge.ties import lowrank_delta, ties, ties_lowrank


@dataclass(frozen=True)
class ModuleParts:
    """One module of the inputs that hold it: factors, scalings ``s_i`` and weights ``w_i``."""

    As: Sequence[torch.Tensor]
    Bs: Sequence[torch.Tensor]
    scalings: Sequence[float]
    weights: Sequence[float]

    def deltas(self) -> list[torch.Tensor]:
        """``w_i s_i B_i @ A_i`` in float32 (weights folded in), by :func:`lowrank_delta`."""
        return [
            lowrank_delta(b, a, w * s)
            for a, b, s, w in zip(self.As, self.Bs, self.scalings, self.weights, strict=True)
        ]


ElementwiseFn = Callable[
    [list[torch.Tensor], torch.Tensor, MergeConfig, torch.Generator], torch.Tensor
]
_Out = tuple[torch.Tensor, torch.Tensor, float]
DeltaFn = Callable[
    [ModuleParts, MergeConfig, int, torch.Generator], tuple[torch.Tensor, torch.Tensor, float]
]


def _density(cfg: MergeConfig) -> float:
    return 1.0 if cfg.density is None else cfg.density


def _linear(
    ts: list[torch.Tensor], w: torch.Tensor, cfg: MergeConfig, g: torch.Generator
) -> torch.Tensor:
    return task_arithmetic(ts, w)


def _ties(
    ts: list[torch.Tensor], w: torch.Tensor, cfg: MergeConfig, g: torch.Generator
) -> torch.Tensor:
    return ties(ts, w, _density(cfg), cfg.majority_sign)


def _dare_linear(
    ts: list[torch.Tensor], w: torch.Tensor, cfg: MergeConfig, g: torch.Generator
) -> torch.Tensor:
    return dare_linear(ts, w, _density(cfg), g)


def _dare_ties(
    ts: list[torch.Tensor], w: torch.Tensor, cfg: MergeConfig, g: torch.Generator
) -> torch.Tensor:
    return dare_ties(ts, w, _density(cfg), g, cfg.majority_sign)


def _magnitude(
    ts: list[torch.Tensor], w: torch.Tensor, cfg: MergeConfig, g: torch.Generator
) -> torch.Tensor:
    return magnitude_prune(ts, w, _density(cfg))


def _dense(fn: ElementwiseFn) -> DeltaFn:
    """Delta space for an entry-wise method: merge ``w_i ΔW_i`` (weights 1), truncated SVD."""

    def run(parts: ModuleParts, cfg: MergeConfig, rank: int, g: torch.Generator) -> _Out:
        deltas = parts.deltas()
        merged = fn(deltas, torch.ones(len(deltas)), cfg, g)
        return truncated_svd(merged, rank)

    return run


def _ties_delta(parts: ModuleParts, cfg: MergeConfig, rank: int, g: torch.Generator) -> _Out:
    """TIES on the deltas without forming them (row chunks), then truncated SVD. Default (PEFT's
    ``ties_svd``): the vote on ``s_i ΔW_i``, the weights in the disjoint merge; ``ties_vote =
    weighted``: on ``w_i s_i ΔW_i``."""
    if cfg.ties_vote is TiesVote.WEIGHTED:
        coefs = [w * s for s, w in zip(parts.scalings, parts.weights, strict=True)]
        merged = ties_lowrank(parts.As, parts.Bs, coefs, _density(cfg), cfg.majority_sign)
    else:
        merged = ties_lowrank(
            parts.As,
            parts.Bs,
            list(parts.scalings),
            _density(cfg),
            cfg.majority_sign,
            weights=list(parts.weights),
        )
    return truncated_svd(merged, rank)


def _dare_ties_delta(parts: ModuleParts, cfg: MergeConfig, rank: int, g: torch.Generator) -> _Out:
    """DARE-TIES on the dense deltas, then truncated SVD; the vote as in :func:`_ties_delta`."""
    if cfg.ties_vote is TiesVote.WEIGHTED:
        deltas, w = parts.deltas(), torch.ones(len(parts.As))
    else:
        deltas = [
            lowrank_delta(b, a, s)
            for a, b, s in zip(parts.As, parts.Bs, parts.scalings, strict=True)
        ]
        w = torch.tensor(list(parts.weights), dtype=torch.float32)
    return truncated_svd(_dare_ties(deltas, w, cfg, g), rank)


def _weighted_sum(parts: ModuleParts, cfg: MergeConfig, rank: int, g: torch.Generator) -> _Out:
    """``sum_i w_i ΔW_i`` re-factored by an exact SVD of the concatenated factors."""
    A, B = cat(parts.As, parts.Bs, parts.weights, parts.scalings)
    return lowrank_svd(B, A, rank)


def _cat(parts: ModuleParts, cfg: MergeConfig, rank: int, g: torch.Generator) -> _Out:
    A, B = cat(parts.As, parts.Bs, parts.weights, parts.scalings)
    if rank < A.shape[0]:
        return lowrank_svd(B, A, rank)
    return A, B, 1.0


def _knots(parts: ModuleParts, cfg: MergeConfig, rank: int, g: torch.Generator) -> _Out:
    return knots(
        parts.As,
        parts.Bs,
        parts.scalings,
        parts.weights,
        rank=rank,
        inner=cfg.knots_merge,
        density=_density(cfg),
        majority_sign=cfg.majority_sign,
    )


@dataclass(frozen=True)
class MethodSpec:
    factor: ElementwiseFn | None
    delta: DeltaFn


REGISTRY: dict[MergeMethod, MethodSpec] = {
    MergeMethod.LINEAR: MethodSpec(_linear, _weighted_sum),
    MergeMethod.TASK_ARITHMETIC: MethodSpec(_linear, _weighted_sum),
    MergeMethod.TIES: MethodSpec(_ties, _ties_delta),
    MergeMethod.DARE_LINEAR: MethodSpec(_dare_linear, _dense(_dare_linear)),
    MergeMethod.DARE_TIES: MethodSpec(_dare_ties, _dare_ties_delta),
    MergeMethod.MAGNITUDE_PRUNE: MethodSpec(_magnitude, _dense(_magnitude)),
    MergeMethod.CAT: MethodSpec(None, _cat),
    MergeMethod.SVD: MethodSpec(None, _weighted_sum),
    MergeMethod.KNOTS: MethodSpec(None, _knots),
}
