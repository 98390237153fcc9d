"""Rank truncation inside adapters: each ``ΔW = s·B·A`` cut to its best rank-``r'`` approximation.

By Eckart-Young the best rank-``r'`` approximation in Frobenius (and spectral) norm keeps the
``r'`` largest singular values of ``ΔW``. The SVD is taken without forming ``ΔW``:
``B = Q_B R_B`` and ``Aᵀ = Q_A R_A`` (thin QR), ``R_B R_Aᵀ = U S Vᵀ`` (an ``r x r`` SVD), so
``B A = (Q_B U) S (Q_A V)ᵀ``. The truncated module keeps ``alpha`` and rsLoRA, and its factors
``B' = (s/s') Q_B U_{:r'} S_{:r'}^{1/2}``, ``A' = S_{:r'}^{1/2} (Q_A V_{:r'})ᵀ`` with ``s'`` the
scaling at rank ``r'``, so ``s'·B'·A'`` is the truncated ``ΔW``. Computed in float64, stored in
the module's dtype. Truncating to the full rank reproduces ``ΔW`` up to float error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.errors import OptionError
from coto_tools.tasks.base import Metrics


def truncate_module(mod: LoraModule, rank: int) -> LoraModule:
    """``mod`` with ``ΔW`` replaced by its best rank-``min(rank, mod.rank)`` approximation."""
    if rank < 1:
        raise OptionError(f"rank {rank}: must be >= 1")
    r = min(int(rank), mod.rank)
    a = mod.A.double()
    b = mod.B.double()
    q_b, r_b = torch.linalg.qr(b)  # (out, r0), (r0, r0) with r0 = min(out, rank)
    q_a, r_a = torch.linalg.qr(a.T)  # (in, r1), (r1, r1)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    r = min(r, int(s.shape[0]))
    root = s[:r].sqrt()
    new = LoraModule(A=mod.A[:r], B=mod.B[:, :r], alpha=mod.alpha, use_rslora=mod.use_rslora)
    fold = mod.scaling / new.scaling
    b_new = fold * (q_b @ u[:, :r]) * root
    a_new = root[:, None] * (q_a @ vh[:r].T).T
    return LoraModule(
        A=a_new.to(mod.A.dtype).contiguous(),
        B=b_new.to(mod.B.dtype).contiguous(),
        alpha=mod.alpha,
        use_rslora=mod.use_rslora,
    )


def rank_truncation(
    adapter: LoraAdapter, r: int, *, modules: Iterable[str] | None = None
) -> LoraAdapter:
    """``adapter`` with every module (or only ``modules``) truncated to rank ``min(r, rank)``."""
    only = set(adapter.names if modules is None else modules)
    unknown = only - set(adapter.names)
    if unknown:
        raise OptionError(f"rank truncation: no such module(s): {sorted(unknown)}")
    new = {n: truncate_module(m, r) if n in only else m for n, m in adapter.modules.items()}
    return adapter.replace(modules=new)


def rank_grid(max_rank: int, ranks: Sequence[int] | None = None) -> list[int]:
    """Ranks to sweep, largest first: ``ranks`` (checked, capped at ``max_rank``), or
    ``max_rank, max_rank // 2, ..., 1``."""
    if max_rank < 1:
        raise OptionError(f"rank sweep: adapter rank {max_rank} < 1")
    if ranks is not None:
        bad = [x for x in ranks if int(x) < 1]
        if bad or not ranks:
            raise OptionError(f"--ranks {list(ranks)}: need ranks >= 1")
        return sorted({min(int(x), max_rank) for x in ranks}, reverse=True)
    out = [max_rank]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


@dataclass(frozen=True)
class RankCurve:
    """Metrics of the adapter truncated to each rank of ``ranks`` (largest first)."""

    ranks: tuple[int, ...]
    metrics: tuple[Metrics, ...]

    def values(self, metric: str) -> list[float]:
        return [m.get(metric) for m in self.metrics]


def rank_sweep(
    evaluate: Callable[[LoraAdapter], Metrics],
    adapter: LoraAdapter,
    ranks: Sequence[int] | None = None,
    *,
    progress: bool = False,
) -> RankCurve:
    """``evaluate(rank_truncation(adapter, r))`` for ``r`` in :func:`rank_grid`."""
    grid = rank_grid(max(m.rank for m in adapter.modules.values()), ranks)
    metrics = [
        evaluate(rank_truncation(adapter, r))
        for r in tqdm(grid, desc="rank sweep", disable=not progress, leave=False)
    ]
    return RankCurve(tuple(grid), tuple(metrics))
