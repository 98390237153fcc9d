"""Learning-rate schedules: linear warm-up, then constant or cosine down to a floor.

Why not decay to 0 (CALIBRATION.md): CoTo's stage 2 (all adapters on, ``p = 1``) is the last
``1 - stage1_ratio`` of training. A schedule that decays to 0 gives that phase almost no updates
(linear-to-0 puts about 6% of the total learning-rate mass into the last 25% of steps), so the
adapters never train together. The default is therefore ``constant`` after warm-up: stage 2 gets
its full share (25% of the updates at ``stage1_ratio = 0.75``). ``cosine`` decays to
``floor · lr`` over the steps after warm-up, for runs that want an annealed end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from coto_tools.errors import OptionError


class LrSchedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


@dataclass(frozen=True)
class LrPlan:
    """``lr(t)`` for 0-based steps ``t < total_steps``.

    Warm-up: ``lr · (t + 1) / W`` for ``t < W`` (``W = warmup_steps``). After it,
    ``constant``: ``lr``; ``cosine``: ``lr · (f + (1 - f) · (1 + cos(π v)) / 2)`` with
    ``v = (t - W) / max(1, T - W - 1)`` and ``f = floor``.
    """

    lr: float
    total_steps: int
    warmup_steps: int = 0
    schedule: LrSchedule = LrSchedule.constant
    floor: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", LrSchedule(self.schedule))
        if not self.lr > 0.0 or not math.isfinite(self.lr):
            raise OptionError(f"learning rate must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.warmup_steps > self.total_steps:
            raise OptionError(
                f"warm-up steps must be in [0, {self.total_steps}], got {self.warmup_steps}"
            )
        if not 0.0 <= self.floor <= 1.0:
            raise OptionError(f"lr floor must be in [0, 1] (a fraction of lr), got {self.floor}")

    def factor(self, step: int) -> float:
        """``lr(step) / lr``."""
        w = self.warmup_steps
        if step < w:
            return (step + 1) / w
        if self.schedule is LrSchedule.constant:
            return 1.0
        v = (step - w) / max(1, self.total_steps - w - 1)
        v = min(1.0, v)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * v))

    def __call__(self, step: int) -> float:
        return self.lr * self.factor(step)
