"""Re-factoring a weight delta into LoRA factors by truncated SVD (Eckart-Young).

``ΔW ≈ B @ A`` with ``B: (out, r)``, ``A: (r, in)`` spanning the top-``r`` singular subspace,
plus the fraction of Frobenius energy kept, ``sum_{j<=r} σ_j² / sum_j σ_j²``. Two routes:

- :func:`truncated_svd` for a dense ΔW: eigen-decomposition of the float32 Gram matrix of the
  smaller side, refined by one float64 Rayleigh-Ritz step (several times faster than
  ``torch.linalg.svd`` on CPU for the shapes of LLM projections).
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

    ``r = min(rank, out, in)``. The top ``r + 8`` singular directions of the smaller side come
    from ``eigh`` of the float32 Gram matrix; one Rayleigh-Ritz step in float64 (QR of ``ΔW V``,
    SVD of the small projected matrix) then gives the SVD restricted to that subspace, accurate
    to float32 rounding of the top directions. ``B = U_r S_r``, ``A = V_rᵀ`` (PEFT's convention).
    """
    d32 = delta.to(torch.float32)
    out_f, in_f = d32.shape
    r = max(1, min(rank, out_f, in_f))
    k = min(r + 8, out_f, in_f)
    d = delta.to(torch.float64)
    total = (d * d).sum()
    if out_f >= in_f:
        vecs = torch.linalg.eigh(d32.T @ d32).eigenvectors[:, -k:].to(torch.float64)  # (in, k)
        q, _ = torch.linalg.qr(d @ vecs)  # (out, k): basis of the top left singular space
        u, s, vh = torch.linalg.svd(q.T @ d, full_matrices=False)  # (k, k), (k,), (k, in)
        B, A = (q @ u[:, :r]) * s[:r], vh[:r]
    else:
        vecs = torch.linalg.eigh(d32 @ d32.T).eigenvectors[:, -k:].to(torch.float64)  # (out, k)
        q, _ = torch.linalg.qr(d.T @ vecs)  # (in, k): basis of the top right singular space
        u, s, vh = torch.linalg.svd(d @ q, full_matrices=False)  # (out, k), (k,), (k, k)
        B, A = u[:, :r] * s[:r], vh[:r] @ q.T
    energy = _energy((s[:r] ** 2).sum(), total)
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
