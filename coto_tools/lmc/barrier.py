"""Barriers along a path.

References: Frankle et al. 2020, arXiv 1912.05671; Entezari et al. 2022, arXiv 2110.06296.

For a path ``θ(a)``, ``a ∈ [0, 1]``, from endpoint A (``a = 0``) to B (``a = 1``):

- loss barrier (Entezari et al., eq. 1):
  ``max_a [ L(a) - ((1 - a)·L_A + a·L_B) ]``;
- accuracy (and log-probability) barrier, signed so that a dip is positive:
  ``max_a [ ((1 - a)·Acc_A + a·Acc_B) - Acc(a) ]``;
- midpoint values ``L(0.5)``, ``Acc(0.5)`` and the midpoint barrier
  ``L(0.5) - (L_A + L_B) / 2`` (the same sign convention per metric).

The maximum is taken over the evaluated points with ``0 <= a <= 1`` (points outside, as on a
``--from-zero`` path extended past scale 1, are extrapolation and do not count). It is a lower
bound of the supremum over the continuous path; the endpoints contribute exactly 0, so a
barrier is never negative. A non-finite value on the path makes that barrier ``nan``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coto_tools.errors import OptionError
from coto_tools.tasks.base import Metrics

#: metric -> True when larger is better (then a dip below the chord is a positive barrier)
HIGHER_IS_BETTER: dict[str, bool] = {"loss": False, "accuracy": True, "logprob": True}


@dataclass(frozen=True)
class Curve:
    """Metrics along a path: ``a`` ascending, ``metrics[i]`` evaluated at ``a[i]``."""

    a: tuple[float, ...]
    metrics: tuple[Metrics, ...]

    def __post_init__(self) -> None:
        if len(self.a) != len(self.metrics):
            raise OptionError(f"curve: {len(self.a)} positions but {len(self.metrics)} metrics")
        if any(y <= x for x, y in zip(self.a, self.a[1:], strict=False)):
            raise OptionError("curve: positions must be strictly increasing")

    def values(self, metric: str) -> np.ndarray:
        return np.array([m.get(metric) for m in self.metrics], dtype=np.float64)

    def at(self, a: float) -> Metrics:
        """The metrics evaluated exactly at ``a`` (KeyError if ``a`` is not a point)."""
        for x, m in zip(self.a, self.metrics, strict=True):
            if x == a:
                return m
        raise KeyError(a)


@dataclass(frozen=True)
class Barrier:
    """One metric's barrier along one path."""

    metric: str
    height: float
    at: float
    start: float
    end: float
    midpoint: float | None
    midpoint_barrier: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "barrier": self.height,
            "argmax_a": self.at,
            "a0": self.start,
            "a1": self.end,
            "midpoint": self.midpoint,
            "midpoint_barrier": self.midpoint_barrier,
        }


def barrier(
    a: np.ndarray, values: np.ndarray, *, higher_is_better: bool, metric: str = "value"
) -> Barrier:
    """The barrier of ``values`` (one per position ``a``) over the points with ``0 <= a <= 1``.

    ``a`` must contain 0 and 1 exactly (the endpoints define the chord).
    """
    a = np.asarray(a, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if a.shape != v.shape or a.ndim != 1:
        raise OptionError(f"barrier: positions {a.shape} and values {v.shape} must be equal 1-D")
    i0 = np.flatnonzero(a == 0.0)
    i1 = np.flatnonzero(a == 1.0)
    if i0.size != 1 or i1.size != 1:
        raise OptionError("barrier: the positions must contain a = 0 and a = 1 exactly once")
    v0, v1 = float(v[i0[0]]), float(v[i1[0]])
    inside = (a >= 0.0) & (a <= 1.0)
    ai, vi = a[inside], v[inside]
    chord = (1.0 - ai) * v0 + ai * v1
    gap = chord - vi if higher_is_better else vi - chord
    if not np.all(np.isfinite(gap)):
        height, at = float("nan"), float("nan")
    else:
        k = int(np.argmax(gap))
        height, at = float(gap[k]), float(ai[k])
    im = np.flatnonzero(a == 0.5)
    mid = float(v[im[0]]) if im.size else None
    mid_barrier = None
    if mid is not None:
        mean = 0.5 * (v0 + v1)
        mid_barrier = mean - mid if higher_is_better else mid - mean
    return Barrier(metric, height, at, v0, v1, mid, mid_barrier)


def barriers(curve: Curve) -> dict[str, Barrier]:
    """``{metric: Barrier}`` for loss, accuracy and log-probability along ``curve``."""
    a = np.asarray(curve.a, dtype=np.float64)
    return {
        metric: barrier(a, curve.values(metric), higher_is_better=hib, metric=metric)
        for metric, hib in HIGHER_IS_BETTER.items()
    }
