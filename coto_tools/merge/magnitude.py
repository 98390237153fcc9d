"""Magnitude pruning: keep the largest-magnitude fraction of entries, then a weighted sum.

The ``magnitude_prune`` merge of PEFT's ``add_weighted_adapter`` (trim step of TIES, Yadav et al.
2023, arXiv 2306.01708, without sign election).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from coto_tools.merge.task_arithmetic import stack_weights

_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)
_SAMPLE = 1 << 16  # entries sampled to bracket the threshold


def kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest value of 1-D ``flat`` (``1 <= k <= numel``), exactly.

    Equal to ``torch.kthvalue(flat, n - k + 1).values``. CPU float tensors use numpy's
    ``partition`` (introselect). Otherwise, for large inputs a strided sample
    brackets the answer; only the entries inside the bracket are selected from (falls back to
    the full ``kthvalue`` when the bracket misses, so the result never depends on the sample).
    """
    n = flat.numel()
    pos = n - k + 1  # 1-based position in ascending order
    if flat.device.type == "cpu" and flat.dtype in _NUMPY_DTYPES:
        # introselect: several times faster than torch.kthvalue on CPU, same value
        picked = np.partition(flat.detach().numpy(), pos - 1)[pos - 1]
        return torch.tensor(picked, dtype=flat.dtype)
    if n <= 4 * _SAMPLE:
        return torch.kthvalue(flat, pos).values
    sample = flat[:: n // _SAMPLE].sort().values
    m = sample.numel()
    centre = pos / n * m
    slack = 6.0 * (m**0.5) + 2.0
    lo = sample[max(0, int(centre - slack))]
    hi = sample[min(m - 1, int(centre + slack))]
    below = int((flat < lo).sum())
    inside = flat[(flat >= lo) & (flat <= hi)]
    if below < pos <= below + inside.numel():
        return torch.kthvalue(inside, pos - below).values
    return torch.kthvalue(flat, pos).values


def magnitude_mask(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the ``k = int(density · numel)`` largest ``|tensor|`` entries.

    The same set as ``torch.topk(|t|, k)`` (PEFT's ``magnitude_based_pruning``) whenever the
    k-th largest magnitude is not tied; ties at the threshold are broken by flat index (first
    kept), so exactly ``k`` entries are kept. Uses :func:`kth_largest` (faster than ``topk``).
    """
    flat = tensor.abs().reshape(-1)
    n = flat.numel()
    k = int(density * n)
    if k >= n:
        return torch.ones_like(tensor, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(tensor, dtype=torch.bool)
    threshold = kth_largest(flat, k)
    above = flat > threshold
    need = k - int(above.sum())
    if need > 0:
        tied = torch.nonzero(flat == threshold).reshape(-1)
        above[tied[:need]] = True
    return above.reshape(tensor.shape)


class TrimRule:
    """One task's trimming rule: keep ``|x| > cut``; while ``need`` > 0 (the k-th largest
    magnitude ``t`` is tied with entries that are dropped), also the first ``need`` entries equal
    to ``t``, by flat index, as :func:`magnitude_mask` does."""

    def __init__(self, buf: torch.Tensor, k: int) -> None:
        """From the whole ``buf`` (destroyed: abs, then partitioned in place, no copy)."""
        if k <= 0:
            self.t, self.cut, self.need = math.inf, math.inf, 0
            return
        flat = buf.abs_().reshape(-1).numpy()
        pos = flat.size - k  # 0-based position of the k-th largest in ascending order
        flat.partition(pos)
        t = flat[pos]
        self.t = float(t)
        self.need = 0
        if pos == 0 or flat[:pos].max() < t:  # no dropped entry ties with t: keep |x| >= t
            self.cut = float(np.nextafter(t, np.array(-np.inf, dtype=t.dtype)))
        else:
            self.cut = self.t
            self.need = k - int(np.count_nonzero(flat[pos + 1 :] > t))

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (rows in flat order, chunk after chunk) with the dropped entries zeroed."""
        mag = t.abs()
        if self.need == 0:  # float-only: threshold, then the signs back (±0 where dropped)
            return torch.copysign(torch.nn.functional.threshold(mag, self.cut, 0.0), t)
        keep = mag > self.t
        tied = torch.nonzero(mag.reshape(-1) == self.t).reshape(-1)[: self.need]
        keep.reshape(-1)[tied] = True
        self.need -= tied.numel()
        return t.mul_(keep)


def magnitude_trim(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """``tensor`` with all but its top-``density`` magnitudes zeroed; density >= 1 is a no-op.

    Equal, bit for bit, to ``tensor * magnitude_mask(tensor, density)``. Fast path (CPU float
    tensors whose k-th largest magnitude is not tied with a dropped entry, the usual case): one
    partition of ``|tensor|`` and float-only ops (``threshold``, ``copysign``), no masks.
    """
    if density >= 1.0:
        return tensor
    n = tensor.numel()
    k = int(density * n)
    if 0 < k < n and tensor.device.type == "cpu" and tensor.dtype in _NUMPY_DTYPES:
        rule = TrimRule(tensor.abs(), k)
        if rule.need == 0:  # nothing dropped ties with the k-th largest: keep exactly |x| >= t
            return rule.apply(tensor)
    return tensor * magnitude_mask(tensor, density).to(tensor.dtype)


def magnitude_prune(
    tensors: Sequence[torch.Tensor], weights: torch.Tensor, density: float
) -> torch.Tensor:
    """Trim each tensor to its top-``density`` magnitudes, then ``sum_i w_i τ̂_i``."""
    trimmed = torch.stack([magnitude_trim(t, density) for t in tensors], dim=0)
    return (trimmed * stack_weights(trimmed, weights)).sum(dim=0)
