"""Task arithmetic: a weighted sum of task vectors (Ilharco et al. 2023, arXiv 2212.04089)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stack_weights(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``weights`` of shape ``(n,)`` reshaped to broadcast against stacked ``(n, ...)`` tensors."""
    return weights.reshape(weights.shape + (1,) * (tensors.dim() - weights.dim()))


def task_arithmetic(tensors: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i τ_i`` for task vectors ``τ_i`` (all of one shape) and weights ``w: (n,)``.

    Ilharco et al. 2023, "Editing models with task arithmetic", arXiv 2212.04089. Negative
    weights negate a task; the weights need not sum to 1.
    """
    stacked = torch.stack(list(tensors), dim=0)
    return (stacked * stack_weights(stacked, weights)).sum(dim=0)
