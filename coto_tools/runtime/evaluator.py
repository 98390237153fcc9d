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

Device (``device=``, ``--device``; :mod:`coto_tools.runtime.device`): the model with its
adapters, the batches and the prefix cache live on one device; logits come back to the CPU and
metrics are CPU floats. The canonical keys and branch order are :class:`BranchKeys`
(:mod:`coto_tools.runtime.branches`), shared with the Ray evaluator through
:class:`BaseEvaluator`.

Prefix reuse (BERT-style prompt tasks, see :mod:`coto_tools.runtime.prefix`): the hidden
states entering each layer are cached under the gates of the layers below it (LRU, at most
``prefix_cache_mb``), so a configuration starts at the highest layer whose lower layers' gates
were seen before (the previous configuration's or any other still cached), and
:meth:`Evaluator.value_batch` evaluates new configurations in lexicographic order of their gates
(lowest layer first: a depth-first walk of the prefix tree). The numbers of a configuration do
not depend on the evaluation order (a cached state is bit-identical to a recomputed one) and
equal a plain forward up to float rounding (texts are regrouped by length to skip padding).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import torch
from torch import nn

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.adapters.players import Players
from coto_tools.errors import OptionError, TaskError
from coto_tools.runtime.branches import DEFAULT, Branch, BranchKeys, Config, ConfigKey
from coto_tools.runtime.device import DeviceLike, resolve_device
from coto_tools.runtime.dtype import DtypeLike, check_dtype, resolve_dtype
from coto_tools.runtime.gated import GatedModel, inject
from coto_tools.runtime.memory import MemoryEstimate, estimate_memory
from coto_tools.runtime.prefix import PrefixRunner, module_layer, supports_prefix
from coto_tools.tasks.base import (
    SPLITS,
    Batch,
    Metrics,
    MetricSums,
    Task,
    metrics_from_logits,
    uses_metric_sums,
)
from coto_tools.tasks.prompt_head import PromptTask

_log = logging.getLogger("coto_tools")


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


class BaseEvaluator(ABC):
    """The evaluator interface shared by :class:`Evaluator` and the Ray evaluator
    (:class:`~coto_tools.runtime.ray_executor.RayEvaluator`): configurations, keys and games
    over :attr:`branch_keys`; subclasses evaluate (:meth:`value_batch`)."""

    branch_keys: BranchKeys
    n_forward: int
    n_cache_hits: int

    @property
    def branches(self) -> list[Branch]:
        """Every branch ``(adapter, module)`` in canonical key order."""
        return self.branch_keys.branches

    def key(self, config: Config) -> ConfigKey:
        """Canonical hashable key: the gate of every branch in :attr:`branches` order."""
        return self.branch_keys.key(config)

    def config_of(self, key: ConfigKey) -> dict[Branch, float]:
        """The configuration of a canonical key."""
        return self.branch_keys.config(key)

    def mask_config(
        self, players: Players, mask: Sequence[bool] | np.ndarray, adapter: str = DEFAULT
    ) -> dict[Branch, float]:
        """Configuration switching on the modules of ``players`` selected by ``mask``."""
        return self.branch_keys.mask_config(players, mask, adapter)

    @abstractmethod
    def value_batch(self, configs: Sequence[Config]) -> list[Metrics]:
        """Metrics of many configurations, in input order."""

    def value(self, config: Config) -> Metrics:
        """Metrics of one configuration."""
        return self.value_batch([config])[0]

    def value_mask(
        self, players: Players, mask: Sequence[bool] | np.ndarray, adapter: str = DEFAULT
    ) -> Metrics:
        """Metrics with exactly the modules of the players in ``mask`` on (gate 1)."""
        return self.value(self.mask_config(players, mask, adapter))

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


class Evaluator(BaseEvaluator):
    """Metrics of gate configurations of ``adapters`` on ``task``'s ``split`` (see module doc).

    ``adapters``: one adapter (branch name ``"default"``) or ``{name: adapter}``. ``model``: a
    base model to reuse (default: ``task.build_model()``); the adapters are injected into it
    until :meth:`close`. ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see
    :mod:`coto_tools.runtime.device`): the model (and so the adapters) and the batches are
    moved there, the prefix cache lives there, metrics come back as CPU floats; ``None``: the
    model stays where it is (a task's model: the CPU). A moved ``model`` stays on the device after
    :meth:`close`. ``reuse_prefix``: skip unchanged lower layers where supported;
    ``prefix_cache_mb``: bound on the cached hidden states (MiB); ``text_chunk``: texts per
    length-sorted forward chunk (default 32: less padding, about 15% less time on the built-in
    task; 0: the task's batches as given).
    ``logits_cache``: how many configurations' logits to keep for :meth:`metrics_per_example`.
    ``dtype``: ``auto`` (float32 on the CPU, the model config's dtype on CUDA), ``float32``,
    ``bfloat16`` or ``float16`` (:mod:`coto_tools.runtime.dtype`): a model built here is loaded in
    it (:meth:`Task.build_model_in`), a given ``model`` is cast in place; ``None``: the model as
    built or given. Adapter branches of a half-precision model run in float32 (as PEFT's).
    The evaluator owns the gates of its model: gates set on :attr:`handle` from outside are
    overwritten, and changing the model's weights invalidates the caches (build a new one).

    Public state: :attr:`task`, :attr:`split`, :attr:`adapters`, :attr:`device`,
    :attr:`branches` / :attr:`branch_keys`, :attr:`labels` (CPU ``(n,)``; empty for tasks
    scored per token), :attr:`n_examples` (rows of the split, also for tasks scored per token),
    :attr:`dtype`, :attr:`memory` (:func:`~coto_tools.runtime.memory.estimate_memory`, logged
    to the ``coto_tools`` logger at INFO when built), :attr:`n_forward`, :attr:`n_cache_hits`.
    """

    def __init__(
        self,
        task: Task,
        adapters: LoraAdapter | Mapping[str, LoraAdapter],
        *,
        split: str = "eval",
        batch_size: int = 64,
        model: nn.Module | None = None,
        device: DeviceLike | None = None,
        reuse_prefix: bool = True,
        prefix_cache_mb: float = 256.0,
        text_chunk: int = 32,
        logits_cache: int = 64,
        dtype: DtypeLike | None = None,
    ) -> None:
        if split not in SPLITS:
            raise OptionError(f"split {split!r}: allowed {', '.join(SPLITS)}")
        if batch_size <= 0:
            raise OptionError(f"batch_size must be positive, got {batch_size}")
        if not (math.isfinite(prefix_cache_mb) and prefix_cache_mb >= 0):
            raise OptionError(f"prefix_cache_mb must be >= 0, got {prefix_cache_mb}")
        if text_chunk < 0:
            raise OptionError(f"text_chunk must be >= 0, got {text_chunk}")
        named = {DEFAULT: adapters} if isinstance(adapters, LoraAdapter) else dict(adapters)
        if not named:
            raise OptionError("no adapters to evaluate")
        target = None if device is None else resolve_device(device)
        self.task = task
        self.split = split
        self.adapters: dict[str, LoraAdapter] = named
        where = target if target is not None else (torch.device("cpu") if model is None else None)
        want = None
        if dtype is not None:
            check_dtype(dtype)
            on = where if where is not None else _device_of(cast(nn.Module, model))
            want = resolve_dtype(dtype, on, task.native_dtype())
        self.model = task.build_model_in(want) if model is None else model
        self.model.eval()
        if target is not None:
            self.model.to(target)  # before injecting: the adapters follow the base weights
        if want is not None and model is not None:
            self.model.to(want)
        self.device: torch.device = target if target is not None else _device_of(self.model)
        self.dtype: torch.dtype = _dtype_of(self.model)
        self.handle: GatedModel = inject(self.model)
        for name, ad in named.items():
            self.handle.add_adapter(ad, name)
        self.batch_size = batch_size
        self._prefix_bytes = int(prefix_cache_mb * (1 << 20))
        self._text_chunk = text_chunk
        self._view_of: Evaluator | None = None
        batches = task.batches(split, batch_size)
        if not batches:
            raise TaskError(f"task {task.name}: split {split!r} is empty")
        self.batches = [batch_to(b, self.device) for b in batches]
        self.memory: MemoryEstimate = estimate_memory(self.model, self.batches)
        if getattr(self.model, "_coto_memory_told", None) != self.memory:
            _log.info(self.memory.line())  # the CLI shows it (not under --quiet); once per model
            object.__setattr__(self.model, "_coto_memory_told", self.memory)  # plain attribute
        # tasks scored by additive sums (causal LM: per token) have no per-example logits
        self._sums = uses_metric_sums(task)
        labels = torch.empty(0) if self._sums else torch.cat([b.labels for b in batches])
        self.labels: torch.Tensor = labels.cpu()
        self.n_examples = sum(len(b) for b in batches)
        self.branch_keys = BranchKeys(named)
        self._runner: PrefixRunner | None = None
        self._prefix_end: list[int] = []
        if reuse_prefix and supports_prefix(self.model, task, [m for _, m in self.branches]):
            self._runner = PrefixRunner(
                self.model,
                cast(PromptTask, task),
                self.batches,
                max_bytes=self._prefix_bytes,
                chunk=text_chunk,
            )
            # key[: _prefix_end[i]] = the gates of layers 0..i-1 (branches are sorted by layer)
            layer_of = [cast(int, module_layer(m)) for _, m in self.branches]
            self._prefix_end = [
                sum(1 for x in layer_of if x < i) for i in range(self._runner.n_layers)
            ]
        self._cache: dict[ConfigKey, Metrics] = {}
        self._logits: OrderedDict[ConfigKey, torch.Tensor] = OrderedDict()
        self._logits_cap = max(0, int(logits_cache))
        self.n_forward = 0
        self.n_cache_hits = 0

    # -- evaluating -----------------------------------------------------------------------
    def value(self, config: Config) -> Metrics:
        """Metrics of one configuration (cached)."""
        return self._value_key(self.key(config))

    def value_batch(self, configs: Sequence[Config]) -> list[Metrics]:
        """Metrics of many configurations (evaluated in prefix-sharing order), in input order."""
        keys = [self.key(c) for c in configs]
        for k in sorted(set(keys) - set(self._cache)):  # lexicographic: lowest layers first
            self._value_key(k)
        return [self._value_key(k) for k in keys]

    def metrics_per_example(self, config: Config) -> PerExample:
        """Per-document predictions and log-probabilities of one configuration."""
        key = self.key(config)
        if self._sums:
            raise TaskError(f"task {self.task.name}: no per-example logits (scored per token)")
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
        if self._sums:
            self._forward_sums(key)
        else:
            self._forward(key)
        return self._cache[key]

    def _forward_sums(self, key: ConfigKey) -> None:
        """One pass adding :meth:`Task.metric_sums` over the split (no logits kept)."""
        for (adapter, module), g in zip(self.branches, key, strict=True):
            self.handle.layers[module].gates[adapter] = g
        total = MetricSums(0.0, 0.0, 0)
        with torch.inference_mode():
            for b in self.batches:
                part = self.task.metric_sums(self.model, b)
                if part is None:
                    raise TaskError(f"task {self.task.name}: metric_sums returned None")
                total = total + part
        self._last = key
        self.n_forward += 1
        self._cache[key] = total.metrics()

    def _forward(self, key: ConfigKey) -> torch.Tensor:
        for (adapter, module), g in zip(self.branches, key, strict=True):
            self.handle.layers[module].gates[adapter] = g
        with torch.inference_mode():
            if self._runner is not None:
                logits = self._runner.run([key[:e] for e in self._prefix_end])
            else:
                logits = torch.cat([self.task.logits(self.model, b) for b in self.batches])
        logits = logits.float().cpu()
        self.n_forward += 1
        metrics = metrics_from_logits(logits, self.labels)
        # a task's own metrics are defined on the whole split (e.g. its question order)
        extra = None if self._view_of else self.task.extra_metrics(self.split, logits, self.labels)
        if extra:
            metrics = replace(metrics, extra=tuple(sorted(extra.items())))
        self._cache[key] = metrics
        if self._logits_cap:
            self._logits[key] = logits
            while len(self._logits) > self._logits_cap:
                self._logits.popitem(last=False)
        return logits

    def document_groups(self, groups: int) -> list[Evaluator]:
        """One evaluator per group of the split's documents
        (:meth:`~coto_tools.tasks.base.Task.document_batches`: dealt round-robin), sharing this
        one's model and adapters: the same configuration keys, each with its own caches and a
        prefix cache of ``1 / groups`` of this one's bound (each holds ``1 / groups`` of the
        documents). A group's metrics are means over its documents (or tokens): weighted by their
        ``n`` they add up to this evaluator's (the three of
        :data:`~coto_tools.tasks.base.METRIC_NAMES`; a task's own extra metrics are not computed
        on a group). Closing a group evaluator drops its caches only;
        close this one to remove the adapters."""
        parts = self.task.document_batches(self.split, groups, self.batch_size)
        views = []
        for batches in parts:
            view = object.__new__(Evaluator)
            view.__dict__.update(self.__dict__)
            view._view_of = self
            view.batches = [batch_to(b, self.device) for b in batches]
            view.labels = (
                torch.empty(0) if self._sums else torch.cat([b.labels for b in batches]).cpu()
            )
            view.n_examples = sum(len(b) for b in batches)
            view._runner = None
            if self._runner is not None:
                chunk = self._text_chunk
                if chunk:  # balanced chunks of at most half the usual size: a group's texts
                    # span the split's lengths, so smaller chunks pad less (measured on the
                    # 400-document eval split in 12 groups: 148 instead of 180 ms a group)
                    n_docs = view.n_examples
                    chunk = -(-n_docs // -(-n_docs // max(1, chunk // 2)))
                view._runner = PrefixRunner(
                    self.model,
                    cast(PromptTask, self.task),
                    view.batches,
                    max_bytes=self._prefix_bytes // groups,
                    chunk=chunk,
                )
            view._cache = {}
            view._logits = OrderedDict()
            view.n_forward = 0
            view.n_cache_hits = 0
            views.append(view)
        return views

    @property
    def layer_passes(self) -> int | None:
        """Encoder layer passes done with prefix reuse (None when reuse is off)."""
        return None if self._runner is None else self._runner.layer_passes

    def close(self) -> nn.Module:
        """Remove the adapters (the base model is restored bit for bit) and drop caches; a
        group evaluator (:meth:`document_groups`) drops its caches only."""
        if self._runner is not None:
            self._runner.clear()
        self._logits.clear()
        if self._view_of is not None:
            self._cache = {}
            return self.model
        return self.handle.remove()


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return torch.device("cpu") if p is None else p.device


def _dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 without one)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its inputs and labels on ``device`` (the same tensors where they are
    there already)."""
    inputs = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.inputs.items()
    }
    return Batch(inputs, batch.labels.to(device))
