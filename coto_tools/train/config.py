"""The trainer's configuration: one frozen, self-validating dataclass."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from coto_tools.errors import OptionError, enum_option
from coto_tools.runtime.dtype import AUTO, check_dtype
from coto_tools.train.lr import LrSchedule
from coto_tools.train.schedule import Shape

DEFAULT_DTYPE = "float32"
"""The training dtype of every run made before ``TrainConfig.dtype`` existed."""


class Method(str, Enum):
    """``coto``: CoTo's progressive activation (arXiv 2506.05713); ``lora``: p = 1 throughout."""

    coto = "coto"
    lora = "lora"


class GroupBy(str, Enum):
    """What one CoTo coin flip switches: one layer's adapters (the reference) or one module."""

    layer = "layer"
    module = "module"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (recorded in full in ``coto.json``).

    ``task_variant`` is passed to ``get_task(task, **task_variant)`` (e.g. ``{"shots": 16}``).
    ``targets``: ``None`` for the task's default target modules, else short kinds (``q``, ``k``,
    ``v``, ``o``, ``up``, ``down``, ...) and/or full module names. ``warmup_ratio`` is the
    fraction of steps spent warming up the learning rate; ``lr_floor`` the cosine floor as a
    fraction of ``lr``. ``p_start``, ``stage1_ratio``, ``schedule`` and ``group`` are ignored by
    ``method = lora`` (p = 1 at every step).

    ``dtype``: the base model's dtype while training (``--dtype``): ``float32`` (default),
    ``bfloat16`` or ``float16``; ``auto`` means float32, since training runs on the CPU. The
    adapter's ``A`` and ``B`` are float32 whatever it is (the branches of a half-precision base
    run in float32, as in PEFT; :func:`coto_tools.runtime.gated.branch_dtype`). The default is
    left out of :meth:`as_dict`, so a ``coto.json`` or reproduction written before the field
    existed (float32 by construction) compares equal to a float32 config, and a run in another
    dtype never does (``reproduce`` refuses to reuse it).
    """

    task: str
    method: Method = Method.coto
    seed: int = 0
    task_variant: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 250
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.08
    lr_schedule: LrSchedule = LrSchedule.constant
    lr_floor: float = 0.1
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] | None = None
    schedule: Shape = Shape.linear
    stage1_ratio: float = 0.75
    p_start: float = 0.1
    group: GroupBy = GroupBy.layer
    lora_dropout: float = 0.0
    eval_split: str = "eval"
    dtype: str = DEFAULT_DTYPE

    def __post_init__(self) -> None:
        wanted = check_dtype(self.dtype)  # the spelling: auto, float32, bf16, torch.bfloat16, ...
        object.__setattr__(self, "dtype", DEFAULT_DTYPE if wanted == AUTO else wanted)
        for name, cls, what in (
            ("method", Method, "method"),
            ("lr_schedule", LrSchedule, "lr schedule"),
            ("schedule", Shape, "schedule shape"),
            ("group", GroupBy, "group"),
        ):
            object.__setattr__(self, name, enum_option(cls, getattr(self, name), what))
        object.__setattr__(self, "task_variant", dict(self.task_variant))
        if self.targets is not None:
            t = tuple(str(x).strip() for x in self.targets if str(x).strip())
            if not t:
                raise OptionError("targets: empty list; give kinds like q,k,v or module names")
            object.__setattr__(self, "targets", t)
        if not self.task:
            raise OptionError("task: empty name")
        checks = [
            (
                isinstance(self.seed, int) and self.seed >= 0,
                f"seed must be an integer >= 0, got {self.seed}",
            ),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (
                0 <= self.warmup_ratio <= 1,
                f"warm-up ratio must be in [0, 1], got {self.warmup_ratio}",
            ),
            (0 <= self.lr_floor <= 1, f"lr floor must be in [0, 1], got {self.lr_floor}"),
            (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
            (
                self.alpha > 0 and math.isfinite(self.alpha),
                f"alpha must be positive, got {self.alpha}",
            ),
            (
                0 <= self.stage1_ratio <= 1,
                f"stage-1 ratio must be in [0, 1], got {self.stage1_ratio}",
            ),
            (0 <= self.p_start <= 1, f"p_start must be in [0, 1], got {self.p_start}"),
            (
                0 <= self.lora_dropout < 1,
                f"lora dropout must be in [0, 1), got {self.lora_dropout}",
            ),
            (
                self.eval_split in ("eval", "quick"),
                f"eval split must be eval or quick, got {self.eval_split!r}",
            ),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise OptionError("; ".join(bad))
        if self.method is Method.coto and self.schedule is Shape.exponential and self.p_start <= 0:
            raise OptionError("the exponential schedule needs p_start > 0")

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_ratio * self.steps))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Enum):
                d[k] = v.value
        d["targets"] = None if self.targets is None else list(self.targets)
        d["warmup_steps"] = self.warmup_steps
        if d["dtype"] == DEFAULT_DTYPE:  # records from before the field read the same
            del d["dtype"]
        return d

    @classmethod
    def from_preset(
        cls, preset: Any, method: str = "coto", seed: int = 0, **overrides: Any
    ) -> TrainConfig:
        """The configuration of a task preset (:class:`coto_tools.tasks.presets.Preset`: its
        task, variant, steps, batch size and lr); ``overrides`` win."""
        kwargs: dict[str, Any] = {
            "task": preset.task,
            "method": method,
            "seed": seed,
            "task_variant": dict(preset.variant),
            "steps": preset.steps,
            "batch_size": preset.batch_size,
            "lr": preset.lr,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`as_dict` (derived keys such as ``warmup_steps`` are dropped; no
        ``dtype`` is float32)."""
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("targets") is not None:
            kwargs["targets"] = tuple(kwargs["targets"])
        return cls(**kwargs)
