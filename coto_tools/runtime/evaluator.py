"""The evaluator: ``value(configuration) -> Metrics`` for adapters injected into a task's model.

A configuration gives a gate to every adapter branch: ``{module: gate}`` for the default adapter,
``{(adapter_name, module): gate}`` for any adapter, or a boolean mask over a
:class:`~coto_tools.adapters.players.Players` grouping (:meth:`Evaluator.value_mask`). Branches
not named get gate 0, so ``value({})`` is the base model. Several adapters are several named
branches of one model (e.g. LMC gates ``1-a`` and ``a``); nothing is copied or merged.

Evaluation is one deterministic pass over the split (``task.batches(split, batch_size)``) in
``torch.inference_mode``, logits concatenated, metrics by
:func:`~coto_tools.tasks.base.metrics_from_logits`. Results are cached under a canonical key
(the tuple of all branch gates in a fixed order); :attr:`Evaluator.n_forward` counts real
evaluations and :attr:`Evaluator.n_cache_hits` cache hits.

Prefix reuse (BERT-style prompt tasks, see :mod:`coto_tools.runtime.prefix`): the layers below
the lowest layer whose gates changed since the previous evaluation are not recomputed;
:meth:`Evaluator.value_batch` orders configurations so that neighbours share long prefixes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.adapters.players import Players
from coto_tools.errors import OptionError, TaskError
from coto_tools.runtime.gated import GatedModel, inject
from coto_tools.runtime.prefix import PrefixRunner, module_layer, supports_prefix
from coto_tools.tasks.base import SPLITS, Metrics, Task, metrics_from_logits
from coto_tools.tasks.prompt_head import PromptTask

DEFAULT = "default"
Branch = tuple[str, str]  # (adapter name, module name)
Config = Mapping[str, float] | Mapping[Branch, float] | Mapping[str | Branch, float]
ConfigKey = tuple[float, ...]


@dataclass(frozen=True)
class PerExample:
    """Per-document results of one configuration: ``labels``/``predictions`` ``(n,)`` int64,
    ``logprobs`` ``(n, C)`` float64 log-softmax of the logits, ``true_logprob`` ``(n,)``."""

    labels: np.ndarray
    predictions: np.ndarray
    logprobs: np.ndarray

    @property
    def true_logprob(self) -> np.ndarray:
        return self.logprobs[np.arange(len(self.labels)), self.labels]

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels


class Evaluator:
    """Metrics of gate configurations of ``adapters`` on ``task``'s ``split`` (see module doc).

    ``adapters``: one adapter (branch name ``"default"``) or ``{name: adapter}``. ``model``: a
    base model to reuse (default: ``task.build_model()``); the adapters are injected into it
    until :meth:`close`. ``reuse_prefix``: skip unchanged lower layers where supported.
    ``logits_cache``: how many configurations' logits to keep for :meth:`metrics_per_example`.
    The evaluator owns the gates of its model: gates set on :attr:`handle` from outside are
    overwritten, and changing the model's weights invalidates the caches (build a new one).
    """

    def __init__(
        self,
        task: Task,
        adapters: LoraAdapter | Mapping[str, LoraAdapter],
        *,
        split: str = "eval",
        batch_size: int = 64,
        model: nn.Module | None = None,
        reuse_prefix: bool = True,
        logits_cache: int = 64,
    ) -> None:
        if split not in SPLITS:
            raise OptionError(f"split {split!r}: allowed {', '.join(SPLITS)}")
        if batch_size <= 0:
            raise OptionError(f"batch_size must be positive, got {batch_size}")
        named = {DEFAULT: adapters} if isinstance(adapters, LoraAdapter) else dict(adapters)
        if not named:
            raise OptionError("no adapters to evaluate")
        self.task = task
        self.split = split
        self.adapters: dict[str, LoraAdapter] = named
        self.model = task.build_model() if model is None else model
        self.model.eval()
        self.handle: GatedModel = inject(self.model)
        for name, ad in named.items():
            self.handle.add_adapter(ad, name)
        self.batches = task.batches(split, batch_size)
        if not self.batches:
            raise TaskError(f"task {task.name}: split {split!r} is empty")
        self.labels = torch.cat([b.labels for b in self.batches])
        # branches in canonical order: by layer (lowest first), then adapter, then module name
        branches = [(a, m) for a, ad in named.items() for m in ad.modules]
        self.branches: list[Branch] = sorted(branches, key=self._branch_order)
        self._index = {b: i for i, b in enumerate(self.branches)}
        self._layer_of = [module_layer(m) for _, m in self.branches]
        self._runner: PrefixRunner | None = None
        if reuse_prefix and supports_prefix(self.model, task, [m for _, m in self.branches]):
            self._runner = PrefixRunner(self.model, cast(PromptTask, task), self.batches)
        self._last: ConfigKey | None = None
        self._cache: dict[ConfigKey, Metrics] = {}
        self._logits: OrderedDict[ConfigKey, torch.Tensor] = OrderedDict()
        self._logits_cap = max(0, int(logits_cache))
        self.n_forward = 0
        self.n_cache_hits = 0

    @staticmethod
    def _branch_order(b: Branch) -> tuple[int, str, str]:
        layer = module_layer(b[1])
        return (-1 if layer is None else layer, b[0], b[1])

    # -- configurations -------------------------------------------------------------------
    def key(self, config: Config) -> ConfigKey:
        """Canonical hashable key: the gate of every branch in :attr:`branches` order."""
        gates = [0.0] * len(self.branches)
        for k, g in config.items():
            branch = self._resolve(k)
            if isinstance(g, torch.Tensor) and g.numel() != 1:
                raise OptionError(f"gate of {branch}: per-row tensor gates are not supported here")
            v = float(g)
            if not math.isfinite(v):
                raise OptionError(f"gate of {branch} is {v}; gates must be finite")
            gates[self._index[branch]] = v + 0.0  # -0.0 -> 0.0
        return tuple(gates)

    def _resolve(self, k: Hashable) -> Branch:
        if isinstance(k, tuple):
            if len(k) != 2 or k not in self._index:
                raise OptionError(f"unknown branch {k!r}; adapters: {sorted(self.adapters)}")
            return k
        if not isinstance(k, str):
            raise OptionError(
                f"configuration key {k!r}: expected a module name or (adapter, module)"
            )
        adapter = DEFAULT if DEFAULT in self.adapters else None
        if adapter is None and len(self.adapters) == 1:
            adapter = next(iter(self.adapters))
        if adapter is None:
            raise OptionError(
                f"module {k!r} without an adapter name, but there are several adapters "
                f"({sorted(self.adapters)}): use (adapter, module) keys"
            )
        if (adapter, k) not in self._index:
            raise OptionError(f"module {k!r} is not in adapter {adapter!r}")
        return (adapter, k)

    def mask_config(
        self, players: Players, mask: Sequence[bool] | np.ndarray, adapter: str = DEFAULT
    ) -> dict[Branch, float]:
        """Configuration switching on the modules of ``players`` selected by ``mask``."""
        if adapter not in self.adapters:
            raise OptionError(f"unknown adapter {adapter!r}; known: {sorted(self.adapters)}")
        return {(adapter, m): g for m, g in players.gates(mask).items()}

    # -- evaluating -----------------------------------------------------------------------
    def value(self, config: Config) -> Metrics:
        """Metrics of one configuration (cached)."""
        return self._value_key(self.key(config))

    def value_mask(
        self, players: Players, mask: Sequence[bool] | np.ndarray, adapter: str = DEFAULT
    ) -> Metrics:
        """Metrics with exactly the modules of the players in ``mask`` on (gate 1)."""
        return self.value(self.mask_config(players, mask, adapter))

    def value_batch(self, configs: Sequence[Config]) -> list[Metrics]:
        """Metrics of many configurations (evaluated in prefix-sharing order), in input order."""
        keys = [self.key(c) for c in configs]
        for k in sorted(set(keys) - set(self._cache)):  # lexicographic: lowest layers first
            self._value_key(k)
        return [self._value_key(k) for k in keys]

    def metrics_per_example(self, config: Config) -> PerExample:
        """Per-document predictions and log-probabilities of one configuration."""
        key = self.key(config)
        logits = self._logits.get(key)
        if logits is None:
            logits = self._forward(key)
        else:
            self.n_cache_hits += 1
        lp = torch.log_softmax(logits.double(), dim=-1)
        return PerExample(
            labels=self.labels.numpy().copy(),
            predictions=logits.argmax(dim=-1).numpy(),
            logprobs=lp.numpy(),
        )

    def _value_key(self, key: ConfigKey) -> Metrics:
        hit = self._cache.get(key)
        if hit is not None:
            self.n_cache_hits += 1
            return hit
        self._forward(key)
        return self._cache[key]

    def _first_changed_layer(self, key: ConfigKey) -> int:
        if self._last is None:
            return 0
        changed = [
            self._layer_of[i]
            for i, (a, b) in enumerate(zip(self._last, key, strict=True))
            if a != b
        ]
        if not changed:
            return self._runner.n_layers if self._runner is not None else 0
        return min(0 if lay is None else lay for lay in changed)

    def _forward(self, key: ConfigKey) -> torch.Tensor:
        for (adapter, module), g in zip(self.branches, key, strict=True):
            self.handle.layers[module].gates[adapter] = g
        with torch.inference_mode():
            if self._runner is not None:
                logits = self._runner.run(self._first_changed_layer(key))
            else:
                logits = torch.cat([self.task.logits(self.model, b) for b in self.batches])
        logits = logits.float().cpu()
        self._last = key
        self.n_forward += 1
        self._cache[key] = metrics_from_logits(logits, self.labels)
        if self._logits_cap:
            self._logits[key] = logits
            while len(self._logits) > self._logits_cap:
                self._logits.popitem(last=False)
        return logits

    @property
    def layer_passes(self) -> int | None:
        """Encoder layer passes done with prefix reuse (None when reuse is off)."""
        return None if self._runner is None else self._runner.layer_passes

    def game(
        self, players: Players, metric: str = "logprob", adapter: str = DEFAULT
    ) -> Callable[[np.ndarray], np.ndarray]:
        """A game ``v(coalitions: bool (k, n_players)) -> (k,)`` of ``metric`` (shapiq's shape)."""
        if metric not in ("logprob", "accuracy", "loss"):
            raise OptionError(f"metric {metric!r}; allowed: logprob, accuracy, loss")

        def v(coalitions: np.ndarray) -> np.ndarray:
            mat = np.atleast_2d(np.asarray(coalitions, dtype=bool))
            configs = [self.mask_config(players, row, adapter) for row in mat]
            return np.array([m.get(metric) for m in self.value_batch(configs)])

        return v

    def close(self) -> nn.Module:
        """Remove the adapters (the base model is restored bit for bit) and drop caches."""
        if self._runner is not None:
            self._runner.clear()
        self._logits.clear()
        return self.handle.remove()
