"""KnOTS (Stoica et al. 2024, "Model merging with SVD to tie the KnOTS", arXiv 2410.19735).

Per module, with scaled deltas ``ΔW_i = s_i B_i A_i``:

1. align: SVD of the horizontal concatenation ``[ΔW_1 ... ΔW_n] = U S [V_1ᵀ ... V_nᵀ]``, so every
   adapter is expressed in the shared basis ``U`` by its block ``S V_iᵀ``;
2. merge the blocks ``S V_iᵀ`` with TIES (default) or task arithmetic;
3. ``ΔW = U · merged``, re-factored to the requested rank.

The SVD is computed exactly from the LoRA factors: ``[ΔW_1 ... ΔW_n] = [s_1 B_1 ... s_n B_n] ·
blockdiag(A_1 ... A_n)`` has rank at most ``R = sum r_i``, so QR of both sides and an SVD of an
``R x R`` core suffice; ``U`` has at most R columns and the merged ΔW has rank <= R.
Weights are folded into the blocks before merging (``w_i S V_iᵀ``), so the sign election of
TIES sees negated tasks as negative. With task arithmetic the result is exactly
``sum_i w_i ΔW_i``. Note: the paper applies the merge to the ``V_i``; following the issue, this
implementation merges the ``S V_iᵀ`` blocks (identical for task arithmetic; for TIES it trims by
the scaled magnitudes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from coto_tools.merge.config import KnotsMerge, MajoritySign
from coto_tools.merge.svd import lowrank_svd
from coto_tools.merge.task_arithmetic import task_arithmetic
from coto_tools.merge.ties import ties


def knots_align(
    As: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor], scalings: Sequence[float]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Step 1: ``(U: (out, K), [S V_iᵀ: (K, in)])`` with ``U S V_iᵀ = s_i B_i A_i`` exactly.

    Directions with singular value below ``1e-12 · σ_max`` are dropped (they carry no energy).
    """
    bcat = torch.cat(
        [b.to(torch.float64) * s for b, s in zip(Bs, scalings, strict=True)], dim=1
    )  # (out, R)
    qb, rb = torch.linalg.qr(bcat)  # (out, k), (k, R)
    qas, ras = [], []
    for a in As:
        qa, ra = torch.linalg.qr(a.to(torch.float64).T)  # (in, k_i), (k_i, r_i)
        qas.append(qa)
        ras.append(ra)
    core = rb @ torch.block_diag(*[ra.T for ra in ras])  # (k, sum k_i)
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    keep = s > (s.max() * 1e-12 if s.numel() else 0)
    if not bool(keep.any()):
        keep[:1] = True
    u, s, vh = u[:, keep], s[keep], vh[keep]
    U = qb @ u  # (out, K)
    blocks, start = [], 0
    for qa in qas:
        k_i = qa.shape[1]
        blocks.append((s[:, None] * vh[:, start : start + k_i]) @ qa.T)  # (K, in)
        start += k_i
    return U, blocks


def knots(
    As: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    scalings: Sequence[float],
    weights: Sequence[float],
    *,
    rank: int,
    inner: KnotsMerge = KnotsMerge.TIES,
    density: float = 1.0,
    majority_sign: MajoritySign = MajoritySign.TOTAL,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """KnOTS merge of LoRA modules: ``(A: (r, in), B: (out, r), energy kept)`` in float32."""
    U, blocks = knots_align(As, Bs, scalings)  # 1. align
    weighted = [w * blk for w, blk in zip(weights, blocks, strict=True)]
    ones = torch.ones(len(weighted), dtype=torch.float64)
    if inner is KnotsMerge.TIES:  # 2. merge the aligned blocks
        merged = ties(weighted, ones, density, majority_sign)
    else:
        merged = task_arithmetic(weighted, ones)
    return lowrank_svd(U, merged, rank)  # 3. ΔW = U · merged, re-factored
