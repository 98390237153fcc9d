"""Concatenation merge: the exact weighted sum of LoRA deltas as one LoRA of the summed rank.

``sum_i w_i s_i B_i A_i = [B_1 ... B_n] @ vstack(w_1 s_1 A_1, ..., w_n s_n A_n)``, so
``A = vstack(w_i s_i A_i)``, ``B = hstack(B_i)``, scaling 1, rank ``sum_i r_i``. This is PEFT's
``combination_type="cat"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cat(
    As: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    weights: Sequence[float],
    scalings: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A: (sum r_i, in), B: (out, sum r_i))`` with ``B @ A = sum_i w_i s_i B_i @ A_i``."""
    A = torch.cat(
        [a.to(torch.float32) * (w * s) for a, w, s in zip(As, weights, scalings, strict=True)],
        dim=0,
    )
    B = torch.cat([b.to(torch.float32) for b in Bs], dim=1)
    return A, B
