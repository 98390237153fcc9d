"""Re-factoring a weight delta into LoRA factors by truncated SVD (Eckart-Young).

``ΔW ≈ B @ A`` with ``B: (out, r)``, ``A: (r, in)`` spanning the top-``r`` singular subspace,
plus the fraction of Frobenius energy kept, ``sum_{j<=r} σ_j² / sum_j σ_j²``. Two routes:

- :func:`truncated_svd` for a dense ΔW: eigen-decomposition of the Gram matrix of the smaller
  side, formed in float64 (several times faster than ``torch.linalg.svd`` on CPU for the shapes of
  LLM projections, and exact up to float64 rounding of the top singular directions).
- :func:`lowrank_svd` for ΔW given as a product ``B @ A`` of rank R (sums of LoRA deltas): QR of
  both factors and an SVD of the ``R x R`` core, never forming ΔW. Exact.

Both return float32 factors whatever the input dtype.
"""

from __future__ import annotations

import torch


def _energy(kept: torch.Tensor, total: torch.Tensor) -> float:
    t = float(total)
    return 1.0 if t <= 0.0 else min(1.0, float(kept) / t)


def truncated_svd(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Top-``rank`` factors of a dense ``delta: (out, in)``: ``(A: (r, in), B: (out, r), energy)``.

    ``r = min(rank, out, in)``. ``B @ A`` is the orthogonal projection of ``delta`` on its
    top-``r`` right (out >= in) or left (out < in) singular subspace: the best rank-r
    approximation.
    """
    d = delta.to(torch.float64)
    out_f, in_f = d.shape
    r = max(1, min(rank, out_f, in_f))
    if out_f >= in_f:
        gram = d.T @ d  # (in, in) = V S² Vᵀ
        evals, vecs = torch.linalg.eigh(gram)
        top = vecs[:, -r:].flip(1)  # (in, r), descending
        B, A = d @ top, top.T
    else:
        gram = d @ d.T  # (out, out) = U S² Uᵀ
        evals, vecs = torch.linalg.eigh(gram)
        top = vecs[:, -r:].flip(1)  # (out, r)
        B, A = top, top.T @ d
    energy = _energy(evals[-r:].clamp_min(0).sum(), evals.clamp_min(0).sum())
    return A.to(torch.float32).contiguous(), B.to(torch.float32).contiguous(), energy


def lowrank_svd(
    B: torch.Tensor, A: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Top-``rank`` SVD factors of ``B @ A`` (``B: (out, R)``, ``A: (R, in)``) without forming it.

    Returns ``(A': (r, in), B': (out, r), energy)`` with ``B' = U_r S_r`` and ``A' = V_rᵀ``
    (PEFT's convention in ``_svd_generalized_task_arithmetic_weighted_adapter``).
    """
    b = B.to(torch.float64)
    a = A.to(torch.float64)
    qb, rb = torch.linalg.qr(b)  # (out, k1), (k1, R)
    qa, ra = torch.linalg.qr(a.T)  # (in, k2), (k2, R)
    core = rb @ ra.T  # (k1, k2)
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    r = max(1, min(rank, s.numel()))
    B_out = (qb @ u[:, :r]) * s[:r]
    A_out = vh[:r] @ qa.T
    energy = _energy((s[:r] ** 2).sum(), (s**2).sum())
    return A_out.to(torch.float32).contiguous(), B_out.to(torch.float32).contiguous(), energy
