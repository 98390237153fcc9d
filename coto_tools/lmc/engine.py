"""Evaluating points of paths and planes: weighted combinations of named adapters.

Everything goes through the project's :class:`~coto_tools.runtime.evaluator.Evaluator`, so a
point that is an adapter is that adapter's own evaluation, bit for bit.

- A delta-space point ``Σ_k w_k ΔW_k`` is one configuration of one evaluator holding every
  adapter as its own named branch: gate ``w_k`` on each module of adapter ``k`` (no weight
  copies; a weight of exactly 0 skips the branch).
- A factor-space point is a new adapter (:func:`interpolate_factors`); it is evaluated by a
  short-lived evaluator on a second base model (built once, restored after each point).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.errors import OptionError
from coto_tools.lmc.space import Space, check_compatible, delta_gates, interpolate_factors
from coto_tools.runtime.device import DeviceLike
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.tasks.base import SPLITS, Metrics, Task


class PointEvaluator:
    """Metrics of weighted combinations of ``adapters`` (name -> adapter) on ``task``'s ``split``.

    ``value(space, {name: weight})``; names left out have weight 0, so ``value(space, {})`` is
    the base model. Results are cached by ``(space, non-zero weights)``. ``device``: where the
    models run (see :class:`~coto_tools.runtime.evaluator.Evaluator`; the factor-space model
    follows the delta-space one).
    """

    def __init__(
        self,
        task: Task,
        adapters: Mapping[str, LoraAdapter],
        *,
        split: str = "eval",
        device: DeviceLike | None = None,
        dtype: str | None = None,
    ) -> None:
        if split not in SPLITS:
            raise OptionError(f"split {split!r}: allowed {', '.join(SPLITS)}")
        if not adapters:
            raise OptionError("no adapters to evaluate")
        self.task = task
        self.split = split
        self.adapters = dict(adapters)
        self.evaluator = Evaluator(task, self.adapters, split=split, device=device, dtype=dtype)
        self._factor_model: nn.Module | None = None
        self._cache: dict[Any, Metrics] = {}
        self.evaluations = 0

    @property
    def model(self) -> nn.Module:
        """The model holding the named branches (gates as set by the last delta point)."""
        return self.evaluator.model

    def _key(self, space: Space, weights: Mapping[str, float]) -> tuple[Any, ...]:
        unknown = set(weights) - set(self.adapters)
        if unknown:
            raise OptionError(
                f"unknown adapter name(s) {sorted(unknown)}; known: {sorted(self.adapters)}"
            )
        used = [n for n in self.adapters if float(weights.get(n, 0.0)) != 0.0]
        return (space, tuple((n, float(weights[n])) for n in used))

    def value(self, space: Space | str, weights: Mapping[str, float]) -> Metrics:
        """Metrics at the point ``weights`` (``{name: w}``) of ``space``."""
        space = Space(space)
        key = self._key(space, weights)
        if key in self._cache:
            return self._cache[key]
        if space is Space.delta:
            names = [n for n, _ in key[1]]
            ads = [self.adapters[n] for n in names]
            gates = delta_gates(names, ads, [w for _, w in key[1]])
            config: dict[str | tuple[str, str], float] = {k: v for k, v in gates.items()}
            metrics = self.evaluator.value(config)
        else:
            metrics = self._factor(dict(key[1]))
        self.evaluations += 1
        self._cache[key] = metrics
        return metrics

    def _factor(self, weights: dict[str, float]) -> Metrics:
        names = list(weights)
        ads = [self.adapters[n] for n in names]
        check_compatible(ads, Space.factor)
        point = interpolate_factors(ads, [weights[n] for n in names])
        if not point.modules:  # every weight is 0: the base model
            return self.evaluator.value({})
        if self._factor_model is None:
            self._factor_model = self.task.build_model_in(self.evaluator.dtype)
        ev = Evaluator(
            self.task,
            point,
            split=self.split,
            model=self._factor_model,
            device=self.evaluator.device,
        )
        try:
            return ev.value(dict.fromkeys(point.modules, 1.0))
        finally:
            ev.close()

    def close(self) -> None:
        """Remove every branch (restores the base model)."""
        self.evaluator.close()
