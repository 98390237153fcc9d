"""TIES-Merging (Yadav et al. 2023, "Resolving interference when merging models", arXiv 2306.01708).

Steps in the paper's order: (1) trim each task vector to its top-``density`` magnitudes,
(2) elect a sign per entry, (3) disjoint merge: average the entries that agree with the elected
sign. The weights enter as in PEFT's ``merge_utils.ties``: the sign is elected on the trimmed
*unweighted* tensors and the weighted tensors are then averaged over the agreeing ones. Delta
space follows PEFT's ``ties_svd`` the same way by default (the vote sees ``s_i ΔW_i``, the
weights enter the disjoint merge); :attr:`~coto_tools.merge.config.TiesVote.WEIGHTED` folds the
weights into the task vectors first, so that the election sees them (with unequal weights the
two differ).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from coto_tools.merge.config import MajoritySign
from coto_tools.merge.magnitude import TrimRule, magnitude_mask, magnitude_trim
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
    trimmed = [magnitude_trim(t, density) for t in tensors]  # 1. trim
    if not trimmed[0].is_floating_point() or (
        torch.promote_types(trimmed[0].dtype, weights.dtype) != trimmed[0].dtype
    ):
        stacked = torch.stack(trimmed, dim=0)
        mask = majority_sign_mask(stacked, majority_sign)  # 2. elect sign
        weighted = stacked * stack_weights(stacked, weights)
        return disjoint_merge(weighted, mask)  # 3. disjoint merge
    # The same numbers with float-only ops (boolean masks are slow on CPU): with the elected
    # sign e = ±1, task i agrees where τ̂_i·e > 0, so max(τ̂_i·e, 0) is |τ̂_i| there and 0
    # elsewhere; its signs count the agreeing tasks, and e·Σ_i w_i·max(τ̂_i·e, 0) is the sum of
    # their w_i τ̂_i exactly (rounding is symmetric in sign). Sums over tasks whose order can
    # matter keep PEFT's (a stack summed over dim 0).
    if majority_sign is MajoritySign.TOTAL:
        votes = _task_sum(trimmed)
    else:
        votes = _exact_sum([t.sign() for t in trimmed])
    e = votes.sign_().add_(0.5).sign_()  # 2. elect sign: +1 where the vote is >= 0, else -1
    agree = [t.mul(e).clamp_(min=0) for t in trimmed]
    count = _exact_sum([a.sign() for a in agree]).clamp_(min=1)
    w = weights.tolist()
    total = _task_sum([a.mul_(wi) for a, wi in zip(agree, w, strict=True)])
    return total.mul_(e).div_(count)  # 3. disjoint merge


def _exact_sum(ts: list[torch.Tensor]) -> torch.Tensor:
    """A new tensor ``Σ ts`` for small integers (exact in any order)."""
    out = ts[0].clone()
    for t in ts[1:]:
        out.add_(t)
    return out


def _task_sum(ts: list[torch.Tensor]) -> torch.Tensor:
    """A new tensor ``Σ ts`` rounded as ``torch.stack(ts).sum(0)`` (one addition for two)."""
    if len(ts) == 1:
        return ts[0].clone()
    if len(ts) == 2:
        return ts[0] + ts[1]
    return torch.stack(ts, dim=0).sum(dim=0)


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


CHUNK_ELEMENTS = 1 << 16
"""Entries per row chunk of :func:`ties_lowrank` (256 KiB of float32 per task and temporary)."""


def lowrank_delta(b: torch.Tensor, a: torch.Tensor, coef: float) -> torch.Tensor:
    """``coef · B @ A`` as float32, from a float64 product rounded once: ``(out, in)``.

    Each entry is a sum of ``r`` products whose float64 rounding error (about 1e-16 relative)
    almost never reaches the float32 rounding, so an entry does not depend on which rows are
    computed with it. A float32 product does: BLAS kernels pick their accumulation order by
    the block's shape, and on some processors rows computed alone differ in the last bit from
    the same rows inside the whole product.
    """
    return (b.to(torch.float64) @ a.to(torch.float64)).mul_(coef).to(torch.float32)


def _delta_rows(b: torch.Tensor, a: torch.Tensor, coef: float, r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0:r1`` of :func:`lowrank_delta`."""
    return lowrank_delta(b[r0:r1], a, coef)


def ties_lowrank(
    As: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    coefs: Sequence[float],
    density: float,
    majority_sign: MajoritySign = MajoritySign.TOTAL,
    *,
    chunk_rows: int | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """:func:`ties_consuming` of the deltas ``c_i · B_i @ A_i`` without holding them: ``(out, in)``.

    ``weights``: applied after the sign election, in the disjoint merge (PEFT's ``ties``: the
    mean over agreeing tasks of ``w_i τ̂_i``); ``None``: 1 each (weights folded into ``coefs``).

    The same numbers as ``ties_consuming([lowrank_delta(B_i, A_i, c_i) ...])``, in one
    float32 ``(out, in)`` buffer plus row chunks: each task's magnitude threshold needs its
    whole ``|ΔW_i|`` once (computed into the buffer and partitioned in place), then the sign
    election and disjoint merge run on row chunks, recomputing ``c_i · B_i[rows] @ A_i`` (cheap:
    the rank is small) and writing the merged rows into the same buffer. ``chunk_rows`` defaults
    to :data:`CHUNK_ELEMENTS` entries per chunk. Float-only ops: with the elected sign
    ``e = ±1``, ``max(τ̂_i·e, 0)`` is ``|τ̂_i|`` where task i agrees and 0 elsewhere; its sum
    times ``e`` is the sum of the agreeing entries (exactly), its signs count them.
    """
    a32 = [a.to(torch.float32) for a in As]
    b32 = [b.to(torch.float32) for b in Bs]
    out_f, in_f = b32[0].shape[0], a32[0].shape[1]
    step = chunk_rows if chunk_rows is not None else max(1, CHUNK_ELEMENTS // max(1, in_f))
    chunks = [(r, min(r + step, out_f)) for r in range(0, out_f, step)]
    buf = torch.empty(out_f, in_f, dtype=torch.float32)
    n = buf.numel()
    k = int(density * n)
    trims: list[TrimRule] | None = None
    if density < 1.0 and k < n:  # 1. trim: thresholds of the whole |ΔW_i|
        trims = []
        for a, b, c in zip(a32, b32, coefs, strict=True):
            if k > 0:
                for r0, r1 in chunks:
                    buf[r0:r1] = _delta_rows(b, a, c, r0, r1)
            trims.append(TrimRule(buf, k))
    total = majority_sign is MajoritySign.TOTAL
    one = torch.ones((), dtype=torch.float32)
    ws = [1.0] * len(a32) if weights is None else [float(w) for w in weights]
    for r0, r1 in chunks:
        ts = []
        for i, (a, b, c) in enumerate(zip(a32, b32, coefs, strict=True)):
            t = _delta_rows(b, a, c, r0, r1)
            ts.append(trims[i].apply(t) if trims is not None else t)
        acc = buf[r0:r1]  # 2. elect sign (merged rows are written in place of the buffer)
        acc.zero_()
        for t in ts:
            acc.add_(t if total else t.sign())
        e = torch.copysign(one, acc)  # +1 where the vote is >= 0 (acc is never -0.0)
        acc.zero_()
        count = torch.zeros_like(acc)
        for t, w in zip(ts, ws, strict=True):  # 3. disjoint merge
            agree = t.mul_(e).clamp_(min=0)
            acc.add_(agree if w == 1.0 else agree * w)
            count.add_(agree.sign_())
        acc.mul_(e).div_(count.clamp_(min=1))
    return buf
