"""CoTo for ``transformers.Trainer`` on a PEFT LoRA model: :class:`CoToCallback`.

CoTo (arXiv 2506.05713) with the built-in trainer's schedule and grouping
(:class:`~coto_tools.train.schedule.CoToSchedule`,
:func:`~coto_tools.adapters.players.make_players`) on a model made by ``peft.get_peft_model``::

    cb = CoToCallback(group="layer", seed=0)
    Trainer(model=peft_model, args=args, train_dataset=ds, callbacks=[cb]).train()

At every optimiser step (``on_step_begin``, once per gradient-accumulation cycle) it draws the
active groups (each with probability ``p(t)``, at least one) and switches the LoRA layers of the
inactive groups off through PEFT's per-layer ``_disable_adapters`` flag: a disabled
``LoraLayer`` returns ``base_layer(x)`` without computing its branch, so its ``lora_A``/
``lora_B`` get no autograd graph and keep ``grad is None``; torch's AdamW skips such parameters,
so their weights *and* moment estimates stay as they were. Scaling a branch by 0 would not do:
the branch would still be computed and get zero (not ``None``) gradients, and AdamW would move
it by momentum and weight decay. After the step (``on_step_end``) and at the end of training
every layer is enabled again, so evaluation and saving see the whole adapter. ``requires_grad``
is never changed.

With the same ``seed`` the gate draws are those of ``coto-tools train`` (same random stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from coto_tools.adapters.keys import strip_peft_prefix
from coto_tools.adapters.players import Players, make_players
from coto_tools.errors import OptionError
from coto_tools.train.schedule import CoToSchedule, Shape

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is a dependency of the tasks
    TrainerCallback = object  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class StepRecord:
    """One optimiser step: its index, ``p(t)`` and the active group names."""

    step: int
    p: float
    active: tuple[str, ...]


def lora_layers(model: nn.Module) -> dict[str, Any]:
    """PEFT ``LoraLayer`` modules of ``model`` by coto-tools module name (PEFT's
    ``base_model.model.`` prefix stripped), in model order."""
    from peft.tuners.lora import LoraLayer

    return {strip_peft_prefix(n): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def gate_rng(seed: int) -> np.random.Generator:
    """The gate-draw stream of ``coto-tools train --seed seed`` (the third of four spawned)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(4)[2])


class CoToCallback(TrainerCallback):
    """Stochastic LoRA activation (CoTo, arXiv 2506.05713) for ``transformers.Trainer``.

    ``group``: ``layer`` (default, as the paper), ``module``, ``kind`` or ``tower``. Schedule:
    ``p_start``, ``stage1_ratio``, ``shape`` over the Trainer's ``max_steps`` (or pass
    ``schedule``). ``model``: the PEFT model (default: the one the Trainer hands over).
    :attr:`history` records every step's draw.
    """

    def __init__(
        self,
        *,
        group: str = "layer",
        p_start: float = 0.1,
        stage1_ratio: float = 0.75,
        shape: str = "linear",
        seed: int = 0,
        schedule: CoToSchedule | None = None,
        model: nn.Module | None = None,
    ) -> None:
        if group not in ("layer", "module", "kind", "tower"):
            raise OptionError(f"group {group!r}; allowed: layer, module, kind, tower")
        CoToSchedule(1, p_start=p_start, stage1_ratio=stage1_ratio, shape=Shape(shape))  # check
        self.group = group
        self.p_start, self.stage1_ratio, self.shape = p_start, stage1_ratio, Shape(shape)
        self.seed = seed
        self.schedule = schedule
        self.model = model
        self.rng = gate_rng(seed)
        self.layers: dict[str, Any] = {}  # PEFT LoraLayer modules
        self.players: Players | None = None
        self.history: list[StepRecord] = []

    # -- set-up ---------------------------------------------------------------------------
    def bind(self, model: nn.Module, total_steps: int) -> None:
        """Find the LoRA layers, build the groups and the schedule (``on_train_begin``)."""
        self.model = model
        self.layers = lora_layers(model)
        if not self.layers:
            raise OptionError("CoToCallback: the model has no PEFT LoRA layers")
        self.players = make_players(list(self.layers), self.group)
        if self.schedule is None:
            self.schedule = CoToSchedule(
                max(1, int(total_steps)),
                p_start=self.p_start,
                stage1_ratio=self.stage1_ratio,
                shape=self.shape,
            )

    def set_active(self, modules: set[str] | None) -> None:
        """Enable exactly the LoRA layers in ``modules`` (``None``: all)."""
        for name, layer in self.layers.items():
            layer._disable_adapters = modules is not None and name not in modules

    def draw(self, step: int) -> StepRecord:
        """Draw and apply the active groups of ``step``."""
        if self.players is None or self.schedule is None:
            raise OptionError("CoToCallback: not bound to a model (call bind or train)")
        p = self.schedule.p(min(step, self.schedule.total_steps - 1))
        mask = self.schedule.sample(min(step, self.schedule.total_steps - 1), len(self.players),
                                    self.rng)  # fmt: skip
        self.set_active(set(self.players.active_modules(mask)))
        names = tuple(n for n, on in zip(self.players.names, mask, strict=True) if on)
        rec = StepRecord(step, p, names)
        self.history.append(rec)
        return rec

    # -- Trainer events -------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = self.model if self.model is not None else kwargs.get("model")
        if model is None:
            raise OptionError("CoToCallback: the Trainer gave no model; pass model=")
        self.bind(model, state.max_steps)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.draw(int(state.global_step))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.set_active(None)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.set_active(None)

    def record(self) -> dict[str, Any]:
        """Schedule, groups and per-step draws, in the shape of ``coto.json``'s entries."""
        return {
            "schedule": None if self.schedule is None else self.schedule.as_dict(),
            "groups": None
            if self.players is None
            else {
                "by": self.players.grouping,
                "names": list(self.players.names),
                "members": [list(m) for m in self.players.members],
            },
            "seed": self.seed,
            "steps": [{"step": r.step, "p": r.p, "active": list(r.active)} for r in self.history],
        }
