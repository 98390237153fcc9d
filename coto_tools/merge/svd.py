"""Re-factoring a weight delta into LoRA factors by truncated SVD (Eckart-Young).

``ΔW ≈ B @ A`` with ``B: (out, r)``, ``A: (r, in)`` spanning the top-``r`` singular subspace,
plus the fraction of Frobenius energy kept, ``sum_{j<=r} σ_j² / sum_j σ_j²``. Two routes:

- :func:`truncated_svd` for a dense ΔW: randomized subspace iteration (Halko, Martinsson & Tropp
  2011, arXiv 0909.4061) with oversampling, a float64 Rayleigh-Ritz step, and an a-posteriori
  Wedin bound on the error of the top-``r`` subspace; when the bound is not below
  :data:`SUBSPACE_TOL` it falls back to the exact route (eigen-decomposition of the float32 Gram
  matrix of the smaller side, refined by the same float64 Rayleigh-Ritz step).
- :func:`lowrank_svd` for ΔW given as a product ``B @ A`` of rank R (sums of LoRA deltas): QR of
  both factors and an SVD of the ``R x R`` core, never forming ΔW. Exact.

Both return float32 factors whatever the input dtype.
"""

from __future__ import annotations

import torch


def _energy(kept: torch.Tensor, total: torch.Tensor | float) -> float:
    t = float(total)
    return 1.0 if t <= 0.0 else min(1.0, float(kept) / t)


SUBSPACE_TOL = 1e-6
"""Accepted bound on ``sin Θ`` between the randomized and the exact top-``r`` singular subspaces."""


_CHUNK = 1 << 16  # entries of ``d`` upcast to float64 at a time


def _mm64(d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``d.double() @ x`` (``x`` float64) without a float64 copy of the whole ``d``.

    ``d`` is float64 (used as is) or float32, possibly a transposed view; it is upcast one block
    of rows of its storage at a time, so the extra memory is one block, not ``d``'s size.
    """
    if d.dtype == torch.float64:
        return d @ x
    if not d.is_contiguous() and d.T.is_contiguous():  # a transposed view: d @ x = Σ Mⱼᵀ xⱼ
        m = d.T
        step = max(1, _CHUNK // max(1, m.shape[1]))
        out = torch.zeros(d.shape[0], x.shape[1], dtype=torch.float64)
        for r in range(0, m.shape[0], step):
            out.addmm_(m[r : r + step].to(torch.float64).T, x[r : r + step])
        return out
    d = d.contiguous()
    step = max(1, _CHUNK // max(1, d.shape[1]))
    out = torch.empty(d.shape[0], x.shape[1], dtype=torch.float64)
    for r in range(0, d.shape[0], step):
        torch.matmul(d[r : r + step].to(torch.float64), x, out=out[r : r + step])
    return out


def _sq_norm64(d: torch.Tensor) -> float:
    """``||d||_F²`` accumulated in float64, one block at a time."""
    if d.dtype == torch.float64:
        return float(torch.linalg.vector_norm(d).square())
    m = d if d.is_contiguous() else d.T if d.T.is_contiguous() else d.contiguous()
    flat = m.reshape(-1)
    return sum(
        float(flat[i : i + _CHUNK].to(torch.float64).square().sum())
        for i in range(0, flat.numel(), _CHUNK)
    )


def _rayleigh_ritz(
    d: torch.Tensor, q: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``d`` (out >= in; products in float64) restricted to the right subspace ``q``.

    ``q: (in, k)``. Returns ``(B, A, s, u)`` with ``B = U_r S_r``, ``A = V_rᵀ``, all Ritz values
    ``s`` and the left Ritz vectors ``u: (out, k)``.
    """
    q = torch.linalg.qr(q).Q  # orthonormal to float64 rounding
    u, s, vh = torch.linalg.svd(_mm64(d, q), full_matrices=False)  # (out, k), (k,), (k, k)
    return u[:, :r] * s[:r], vh[:r] @ q.T, s, u


def _exact_basis(d32: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` right singular vectors of ``d32: (out, in)`` from ``eigh`` of its Gram matrix."""
    return torch.linalg.eigh(d32.T @ d32).eigenvectors[:, -k:].to(torch.float64)


def _randomized_basis(d32: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Orthonormal ``(in, k)`` basis of ``(ΔWᵀΔW)^iters ΔWᵀ Ω`` (QR after every product)."""
    g = torch.Generator().manual_seed(0)  # fixed: same input, same numbers
    y = d32.T @ torch.randn(d32.shape[0], k, generator=g)
    q = torch.linalg.qr(y).Q
    for _ in range(iters):
        q = torch.linalg.qr(d32 @ q).Q
        q = torch.linalg.qr(d32.T @ q).Q
    return q.to(torch.float64)


_NORM_SAFETY = 1.5  # power iteration under-estimates a norm: inflate it before using it as a bound


def _spectral_norm_estimate(d: torch.Tensor, u: torch.Tensor, steps: int = 4) -> float:
    """Power-iteration estimate of ``||(I - u uᵀ) d||_2`` (``u`` orthonormal columns)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(d.shape[1], 2, generator=g, dtype=d.dtype)
    est = 0.0
    for _ in range(steps):
        y = d @ x
        y = y - u @ (u.T @ y)
        x, rr = torch.linalg.qr(d.T @ y)
        est = float(torch.linalg.matrix_norm(rr, ord=2)) ** 0.5
    return est


def _wedin_bound(
    d: torch.Tensor, d32: torch.Tensor, A: torch.Tensor, s: torch.Tensor, u: torch.Tensor, r: int
) -> float:
    """Bound on ``sin Θ`` of the top-``r`` subspace found by Rayleigh-Ritz (Wedin 1972).

    Residual ``R = ΔW V_r - U_r S_r`` (the other residual is 0 by construction); the gap uses an
    upper estimate of the exact ``σ_{r+1}``: ``σ_{r+1}(Ritz) + ||(I - U Uᵀ) ΔW||_2`` (Weyl).
    """
    resid = _mm64(d, A.T) - u[:, :r] * s[:r]
    above = float(s[r]) if s.numel() > r else 0.0
    sigma_next = above + _NORM_SAFETY * _spectral_norm_estimate(d32, u.to(torch.float32))
    gap = float(s[r - 1]) - sigma_next
    if gap <= 0.0:
        return float("inf")
    return float(torch.linalg.matrix_norm(resid, ord=2)) / gap


def truncated_svd(
    delta: torch.Tensor, rank: int, *, iters: int = 4
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Top-``rank`` factors of a dense ``delta: (out, in)``: ``(A: (r, in), B: (out, r), energy)``.

    ``r = min(rank, out, in)``. A basis of ``k = r + max(8, r // 2)`` right singular directions
    comes from ``iters`` randomized subspace iterations in float32 (Halko et al. 2011, arXiv
    0909.4061, Alg. 4.4); a float64 Rayleigh-Ritz step gives the SVD restricted to it. The result
    is kept when the a-posteriori Wedin bound on the top-``r`` subspace angle is below
    :data:`SUBSPACE_TOL`; otherwise the basis comes from ``eigh`` of the float32 Gram matrix
    (exact up to float32 rounding of the top directions). ``B = U_r S_r``, ``A = V_rᵀ`` (PEFT's
    convention).
    """
    transpose = delta.shape[0] < delta.shape[1]
    d32 = delta.to(torch.float32)
    if transpose:
        d32 = d32.T
    out_f, in_f = d32.shape
    r = max(1, min(rank, out_f, in_f))
    # float64 products read d32 block by block (no float64 copy of ΔW); float64 input as is
    d = d32 if delta.dtype != torch.float64 else (delta.T if transpose else delta)
    total = _sq_norm64(d)
    k = min(r + max(8, r // 2), in_f)
    found = None
    if k < in_f and iters > 0:
        B, A, s, u = _rayleigh_ritz(d, _randomized_basis(d32, k, iters), r)
        if _wedin_bound(d, d32, A, s, u, r) < SUBSPACE_TOL:
            found = (B, A, s)
    if found is None:  # the randomized subspace is not certified: the exact method
        k = min(r + 8, in_f)
        B, A, s, _ = _rayleigh_ritz(d, _exact_basis(d32, k), r)
        found = (B, A, s)
    B, A, s = found
    energy = _energy((s[:r] ** 2).sum(), total)
    if transpose:
        A, B = B.T, A.T
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
