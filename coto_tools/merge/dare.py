"""DARE: drop-and-rescale (Yu et al. 2023, "Language models are Super Mario", arXiv 2311.03099).

Each entry of each task vector is kept with probability ``density`` and the kept ones are divided
by ``density`` (so the expectation is unchanged); then a weighted sum (``dare-linear``) or the
TIES sign election and disjoint merge (``dare-ties``).

Randomness: the masks are drawn with ``torch.bernoulli(full(density), generator=g)`` from the
``torch.Generator`` passed in, one draw per tensor in the order given. PEFT's DARE draws from
torch's *global* RNG with the same call, so its results match ours only when the global RNG is
seeded the same and the tensors are drawn in the same order; otherwise only statistics compare.
``density >= 1`` draws nothing and returns the tensors unchanged (as PEFT).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from coto_tools.merge.config import MajoritySign
from coto_tools.merge.task_arithmetic import stack_weights
from coto_tools.merge.ties import disjoint_merge, majority_sign_mask


def random_drop(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability ``density``, rescaled by ``1/density``."""
    if density >= 1.0:
        return tensor
    keep = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    return tensor * keep / density


def dare_linear(
    tensors: Sequence[torch.Tensor],
    weights: torch.Tensor,
    density: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Drop-and-rescale each tensor, then ``sum_i w_i τ̃_i``."""
    dropped = torch.stack([random_drop(t, density, generator) for t in tensors], dim=0)
    return (dropped * stack_weights(dropped, weights)).sum(dim=0)


def dare_ties(
    tensors: Sequence[torch.Tensor],
    weights: torch.Tensor,
    density: float,
    generator: torch.Generator,
    majority_sign: MajoritySign = MajoritySign.TOTAL,
) -> torch.Tensor:
    """Drop-and-rescale each tensor, then TIES' sign election and disjoint merge."""
    dropped = torch.stack([random_drop(t, density, generator) for t in tensors], dim=0)
    mask = majority_sign_mask(dropped, majority_sign)
    return disjoint_merge(dropped * stack_weights(dropped, weights), mask)
