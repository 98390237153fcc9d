"""CoTo's activation-probability schedule and its per-step gate draws.

CoTo (Zhuang et al., "Come Together, But Not Right Now: A Progressive Strategy to Boost Low-Rank
Adaptation", ICML 2025, arXiv 2506.05713) switches LoRA adapters off at random during training:

1. the activation probability ``p(t)`` rises from ``p_start`` to 1 over the first
   ``stage1_ratio · T`` steps (stage 1) and stays 1 afterwards (stage 2, plain LoRA);
2. each step, every group of adapters (by default one layer's adapters) is active with
   probability ``p(t)``, independently;
3. at least one group is active: the draw is repeated until one is (the authors' reference code).

:class:`CoToSchedule` is a small object usable in any training loop::

    sched = CoToSchedule(total_steps=T)
    rng = np.random.default_rng(seed)
    for t in range(T):
        mask = sched.sample(t, n_groups, rng)      # bool (n_groups,), at least one True
        gated.set_gates(players.gates(mask))       # inactive: gate 0.0 -> skipped, grad None
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import numpy as np

from coto_tools.errors import OptionError, enum_option

# Rejection sampling (the reference's "redraw until one is active") is exact; after this many
# all-off draws in a row (only when p · n_groups is tiny) the same conditional distribution is
# drawn directly instead, so that a tiny p cannot stall training.
MAX_REDRAWS = 1000


class Shape(str, Enum):
    """How ``p(t)`` rises from ``p_start`` to 1 during stage 1."""

    linear = "linear"
    exponential = "exponential"
    sine = "sine"


def _linear(u: float, p0: float) -> float:
    return p0 + (1.0 - p0) * u


def _exponential(u: float, p0: float) -> float:
    return p0 ** (1.0 - u)


def _sine(u: float, p0: float) -> float:
    return p0 + (1.0 - p0) * math.sin(0.5 * math.pi * u)


_SHAPES = {Shape.linear: _linear, Shape.exponential: _exponential, Shape.sine: _sine}


@dataclass(frozen=True)
class CoToSchedule:
    """Activation probability ``p(t)`` of CoTo (arXiv 2506.05713), for steps ``t = 0 .. T-1``.

    With ``T = total_steps``, ``p0 = p_start``, ``r = stage1_ratio`` and the stage-1 progress
    ``u(t) = min(1, t / (r · T))`` (``u = 1`` for every step when ``r = 0``):

    - ``linear``:      ``p(t) = p0 + (1 - p0) · u``  (the paper's schedule)
    - ``exponential``: ``p(t) = p0 · (1 / p0) ** u = p0 ** (1 - u)``  (log p rises linearly; slow
      at first, fast at the end; needs ``p0 > 0``)
    - ``sine``:        ``p(t) = p0 + (1 - p0) · sin(π u / 2)``  (fast at first, flat at the end)

    All three give ``p(0) = p0`` and ``p(t) = 1`` for ``t ≥ r · T``. ``p_start = 1`` is plain LoRA.
    """

    total_steps: int
    p_start: float = 0.1
    stage1_ratio: float = 0.75
    shape: Shape = Shape.linear

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _parse_shape(self.shape))
        if int(self.total_steps) != self.total_steps or self.total_steps < 1:
            raise OptionError(f"total steps must be a positive integer, got {self.total_steps}")
        if not 0.0 <= self.p_start <= 1.0 or not math.isfinite(self.p_start):
            raise OptionError(f"p_start must be in [0, 1], got {self.p_start}")
        if not 0.0 <= self.stage1_ratio <= 1.0 or not math.isfinite(self.stage1_ratio):
            raise OptionError(f"stage1_ratio must be in [0, 1], got {self.stage1_ratio}")
        if self.shape is Shape.exponential and self.p_start <= 0.0:
            raise OptionError(
                "the exponential schedule needs p_start > 0 (p = p_start ** (1 - u)); "
                f"got {self.p_start}; use linear or sine to start from 0"
            )

    @property
    def stage1_steps(self) -> float:
        """``stage1_ratio · T``: the first step with ``p = 1`` is ``ceil`` of this."""
        return self.stage1_ratio * self.total_steps

    def progress(self, step: int) -> float:
        """Stage-1 progress ``u(t) = min(1, t / (stage1_ratio · T))`` in [0, 1]."""
        if step < 0:
            raise OptionError(f"step must be >= 0, got {step}")
        end = self.stage1_steps
        if end <= 0.0:
            return 1.0
        return min(1.0, step / end)

    def p(self, step: int) -> float:
        """Activation probability at 0-based ``step``."""
        u = self.progress(step)
        if u >= 1.0:
            return 1.0
        return float(min(1.0, _SHAPES[self.shape](u, self.p_start)))

    def sample(self, step: int, n_groups: int, rng: np.random.Generator) -> np.ndarray:
        """Bernoulli(``p(step)``) mask over ``n_groups`` groups with at least one ``True``."""
        return sample_active(self.p(step), n_groups, rng)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = self.shape.value
        return d


def _parse_shape(shape: Shape | str) -> Shape:
    return enum_option(Shape, shape, "schedule shape")


def sample_active(p: float, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Each of ``n_groups`` groups is active with probability ``p``; redrawn until one is.

    The result is distributed as independent Bernoulli(p) draws conditioned on "at least one
    active". Draws use ``rng`` only, so a seeded generator gives the same masks. With ``p = 0``
    (the limit of that conditional distribution) exactly one group, uniformly chosen, is active.
    """
    if n_groups < 1:
        raise OptionError(f"need at least one group, got {n_groups}")
    if not 0.0 <= p <= 1.0:
        raise OptionError(f"activation probability must be in [0, 1], got {p}")
    if p >= 1.0:
        return np.ones(n_groups, dtype=bool)
    if p > 0.0:
        for _ in range(MAX_REDRAWS):
            mask = rng.random(n_groups) < p
            if mask.any():
                return mask
    return _conditional_draw(p, n_groups, rng)


def _conditional_draw(p: float, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Exact draw of Bernoulli(p)^n conditioned on at least one success (p = 0: one success).

    The number of active groups ``K`` has ``P(K = k) ∝ C(n, k) p^k (1-p)^(n-k)`` for ``k ≥ 1``;
    given ``K``, the active set is a uniformly random ``K``-subset.
    """
    k = np.arange(1, n_groups + 1)
    if p <= 0.0:
        n_active = 1
    else:
        log_c = np.array(
            [
                math.lgamma(n_groups + 1) - math.lgamma(i + 1) - math.lgamma(n_groups - i + 1)
                for i in k
            ]
        )
        logw = log_c + k * math.log(p) + (n_groups - k) * math.log1p(-p)
        w = np.exp(logw - logw.max())
        n_active = int(rng.choice(k, p=w / w.sum()))
    mask = np.zeros(n_groups, dtype=bool)
    mask[rng.choice(n_groups, size=n_active, replace=False)] = True
    return mask
