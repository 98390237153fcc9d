"""Evaluating points of paths and planes: weighted combinations of named adapters on one model.

All adapters of a run are injected once, each as its own gated branch. A delta-space point
``Σ_k w_k ΔW_k`` sets branch ``k``'s gates to ``w_k`` (no weight copies; a weight of exactly 0
skips the branch). A factor-space point is a new adapter (:func:`interpolate_factors`) loaded
into one extra branch, ``_factor``, while every named branch is gated off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.errors import OptionError, TaskError
from coto_tools.lmc.space import Space, check_compatible, interpolate_factors
from coto_tools.runtime.gated import GatedModel, inject
from coto_tools.tasks.base import SPLITS, Metrics, Task, metrics_from_logits

FACTOR_BRANCH = "_factor"


class PointEvaluator:
    """Metrics of weighted combinations of ``adapters`` (name -> adapter) on ``task``'s ``split``.

    ``value(space, {name: weight})``; names left out have weight 0. Results are cached by
    ``(space, weights)``. Evaluation is one pass over the split in inference mode with the
    logits concatenated (as :func:`coto_tools.train.loop.evaluate`), so a point whose only
    weight is ``1.0`` on adapter ``k`` reproduces adapter ``k``'s own evaluation exactly.
    """

    def __init__(
        self, task: Task, adapters: Mapping[str, LoraAdapter], *, split: str = "eval"
    ) -> None:
        if split not in SPLITS:
            raise OptionError(f"split {split!r}: allowed {', '.join(SPLITS)}")
        if not adapters:
            raise OptionError("no adapters to evaluate")
        if FACTOR_BRANCH in adapters:
            raise OptionError(f"adapter name {FACTOR_BRANCH!r} is reserved")
        self.task = task
        self.split = split
        self.adapters = dict(adapters)
        self.model = task.build_model()
        self.handle: GatedModel = inject(self.model)
        for name, ad in self.adapters.items():
            self.handle.add_adapter(ad, name)
        self.batches = task.batches(split)
        if not self.batches:
            raise TaskError(f"task {task.name}: split {split!r} is empty")
        self._cache: dict[Any, Metrics] = {}
        self.evaluations = 0

    # -- configuring the model ------------------------------------------------------------
    def _set_delta(self, weights: Mapping[str, float]) -> None:
        for name, ad in self.adapters.items():
            w = float(weights.get(name, 0.0))
            self.handle.set_gates({m: w for m in ad.modules}, name)
        self._clear_factor()

    def _clear_factor(self) -> None:
        for layer in self.handle.layers.values():
            if FACTOR_BRANCH in layer.gates:
                layer.remove_adapter(FACTOR_BRANCH)

    def _set_factor(self, weights: Mapping[str, float]) -> None:
        names = list(self.adapters)
        point = interpolate_factors(
            [self.adapters[n] for n in names], [float(weights.get(n, 0.0)) for n in names]
        )
        for name in names:
            self.handle.set_all(0.0, name)
        self._clear_factor()
        for module, mod in point.modules.items():
            self.handle.layers[module].add(FACTOR_BRANCH, mod, gate=1.0)

    # -- evaluating -----------------------------------------------------------------------
    def _check(self, space: Space, weights: Mapping[str, float]) -> tuple[Any, ...]:
        unknown = set(weights) - set(self.adapters)
        if unknown:
            raise OptionError(
                f"unknown adapter name(s) {sorted(unknown)}; known: {sorted(self.adapters)}"
            )
        used = [n for n in self.adapters if float(weights.get(n, 0.0)) != 0.0]
        if space is Space.factor:
            check_compatible([self.adapters[n] for n in used], Space.factor)
        return (space, tuple((n, float(weights[n])) for n in used))

    def value(self, space: Space, weights: Mapping[str, float]) -> Metrics:
        """Metrics at the point ``weights`` (``{name: w}``) of ``space``."""
        space = Space(space)
        key = self._check(space, weights)
        if key in self._cache:
            return self._cache[key]
        if space is Space.delta:
            self._set_delta(weights)
        else:
            self._set_factor(weights)
        metrics = self._evaluate()
        self._cache[key] = metrics
        return metrics

    def _evaluate(self) -> Metrics:
        self.model.eval()
        logits, labels = [], []
        with torch.inference_mode():
            for b in self.batches:
                logits.append(self.task.logits(self.model, b).float())
                labels.append(b.labels)
        self.evaluations += 1
        return metrics_from_logits(torch.cat(logits), torch.cat(labels))

    def close(self) -> None:
        """Remove every branch (restores the base model)."""
        self.handle.remove()


def weights_for(names: Sequence[str | None], values: Sequence[float]) -> dict[str, float]:
    """``{name: w}`` for the named entries (``None`` stands for the zero adapter: no entry)."""
    return {n: float(w) for n, w in zip(names, values, strict=True) if n is not None}
