"""TIES-Merging (Yadav et al. 2023, "Resolving interference when merging models", arXiv 2306.01708).

Steps in the paper's order: (1) trim each task vector to its top-``density`` magnitudes,
(2) elect a sign per entry, (3) disjoint merge: average the entries that agree with the elected
sign. The weights enter as in PEFT's ``merge_utils.ties``: the sign is elected on the trimmed
*unweighted* tensors and the weighted tensors are then averaged over the agreeing ones. (In delta
space coto-tools folds the weights into the task vectors first, so the election sees them.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from coto_tools.merge.config import MajoritySign
from coto_tools.merge.magnitude import magnitude_mask, magnitude_trim
from coto_tools.merge.task_arithmetic import stack_weights


def majority_sign_mask(stacked: torch.Tensor, method: MajoritySign) -> torch.Tensor:
    """Step 2, elect sign. ``stacked: (n, ...)``; True where a task agrees with the elected sign.

    ``total``: sign of the sum of the values (the paper's rule); ``frequency``: the sign held by
    more tasks. A zero sum elects +.
    """
    sign = stacked.sign()
    magnitude = stacked.sum(dim=0) if method is MajoritySign.TOTAL else sign.sum(dim=0)
    elected = torch.where(magnitude >= 0, 1.0, -1.0).to(sign.dtype)
    return sign == elected


def disjoint_merge(weighted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Step 3: the mean over tasks of ``weighted`` where ``mask`` holds (0 where none does)."""
    total = (weighted * mask).sum(dim=0)
    count = mask.sum(dim=0).clamp(min=1)
    return total / count


def ties(
    tensors: Sequence[torch.Tensor],
    weights: torch.Tensor,
    density: float,
    majority_sign: MajoritySign = MajoritySign.TOTAL,
) -> torch.Tensor:
    """TIES merge of same-shaped tensors, weights ``(n,)``: trim -> elect sign -> disjoint merge."""
    trimmed = torch.stack([magnitude_trim(t, density) for t in tensors], dim=0)  # 1. trim
    mask = majority_sign_mask(trimmed, majority_sign)  # 2. elect sign
    weighted = trimmed * stack_weights(trimmed, weights)
    return disjoint_merge(weighted, mask)  # 3. disjoint merge


def ties_consuming(
    tensors: list[torch.Tensor],
    density: float,
    majority_sign: MajoritySign = MajoritySign.TOTAL,
) -> torch.Tensor:
    """:func:`ties` with unit weights, in place: overwrites (and frees) ``tensors``.

    Memory-lean variant for delta space (dense ΔW's of LLM projections): no ``(n, ...)``
    stacks, about ``n + 2`` tensors of one shape alive at once. The same numbers as :func:`ties`
    for two tasks; for more, the per-entry sums may round differently.
    """
    for t in tensors:
        if density < 1.0:
            t.mul_(magnitude_mask(t, density))  # 1. trim
    acc = torch.zeros_like(tensors[0])
    for t in tensors:  # 2. elect sign
        acc.add_(t if majority_sign is MajoritySign.TOTAL else t.sign())
    positive = acc >= 0
    acc.zero_()
    count = torch.zeros_like(acc)
    while tensors:  # 3. disjoint merge
        t = tensors.pop(0)
        agree = torch.where(positive, t > 0, t < 0)
        acc.add_(t.mul_(agree))
        count.add_(agree)
        del t, agree
    return acc.div_(count.clamp_(min=1))
