"""The task contract: a frozen base model, data, and a differentiable head producing logits.

Every analysis evaluates through :class:`Task`; the evaluator and the trainer rely only on the
methods below. Built-in tasks live in this package; users can plug in their own.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from coto_tools.errors import OptionError

SPLITS = ("train", "eval", "quick")


@dataclass(frozen=True)
class Batch:
    """Model inputs for ``n`` examples (already tokenised) and their integer labels ``(n,)``."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Metrics:
    """Accuracy, mean cross-entropy, and mean log-probability of the true label."""

    accuracy: float
    loss: float
    logprob: float
    n: int
    extra: tuple[tuple[str, float], ...] = ()
    """Task-specific metrics beside these (e.g. ``accuracy_norm`` of multiple choice)."""

    def as_dict(self) -> dict[str, float]:
        base = {"accuracy": self.accuracy, "loss": self.loss, "logprob": self.logprob, "n": self.n}
        return base | dict(self.extra)

    def get(self, metric: str) -> float:
        extra = dict(self.extra)
        if metric in extra:
            return float(extra[metric])
        if metric not in ("accuracy", "loss", "logprob", "perplexity"):
            raise KeyError(metric)
        return float(getattr(self, metric))

    @property
    def perplexity(self) -> float:
        """``exp(loss)``: the perplexity of a language-modelling task (inf on overflow)."""
        return math.exp(self.loss) if self.loss < 700 else math.inf


METRIC_NAMES = ("logprob", "accuracy", "loss")


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> Metrics:
    """Metrics of one forward pass. ``logits: (n, C)``, ``labels: (n,)``; float64 reductions."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    true_lp = lp.gather(1, labels.view(-1, 1)).squeeze(1)
    acc = (logits.argmax(dim=-1) == labels).double().mean()
    return Metrics(
        accuracy=float(acc),
        loss=float(-true_lp.mean()),
        logprob=float(true_lp.mean()),
        n=int(labels.shape[0]),
    )


@dataclass(frozen=True)
class MetricSums:
    """Additive sums over the scored items of a batch (the tokens of a language-modelling task):
    ``logprob_sum`` of the true items' log-probabilities, ``correct`` argmax hits, ``count``.

    Tasks that are not one-label-per-example return these from :meth:`Task.metric_sums`; the
    evaluator adds them over the split and reports per-item means (:meth:`metrics`)."""

    logprob_sum: float
    correct: float
    count: int

    def __add__(self, other: MetricSums) -> MetricSums:
        return MetricSums(
            self.logprob_sum + other.logprob_sum, self.correct + other.correct,
            self.count + other.count,
        )  # fmt: skip

    def metrics(self) -> Metrics:
        """Per-item means: accuracy, logprob, loss = -logprob; ``n`` = items scored."""
        if self.count <= 0:
            nan = float("nan")
            return Metrics(accuracy=nan, loss=nan, logprob=nan, n=0)
        lp = self.logprob_sum / self.count
        return Metrics(accuracy=self.correct / self.count, loss=-lp, logprob=lp, n=self.count)


class Task(ABC):
    """A classification (or scoring) task over a frozen base model.

    Contract used by the evaluator and the trainer:

    - :meth:`build_model` returns a fresh frozen base model (eval mode, no ``requires_grad``).
    - :meth:`default_targets` names the ``nn.Linear`` modules adapters go into by default.
    - :meth:`batches` returns the split's examples tokenised once, in fixed order, as batches.
    - :meth:`train_batch` returns the training examples at ``indices`` as one batch.
    - :meth:`logits` maps (model, batch) to ``(n, n_classes)`` logits, differentiably.
    - optional: :meth:`metric_sums` for tasks scored per item rather than per example (causal
      language modelling: per token); when overridden the evaluator uses it instead of
      :meth:`logits` (see :func:`uses_metric_sums`).
    """

    name: str = "task"
    labels: tuple[str, ...] = ()
    description: str = ""

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def default_targets(self) -> list[str]: ...

    @abstractmethod
    def batches(self, split: str, batch_size: int = 64) -> list[Batch]: ...

    def document_units(self, split: str) -> int:
        """How many units :meth:`document_batches` deals out: the batches of
        :meth:`batches` asked for one example each (documents, or the task's own batches)."""
        return len(self.batches(split, 1))

    def document_batches(self, split: str, groups: int, batch_size: int = 64) -> list[list[Batch]]:
        """The split cut into ``groups`` groups of documents, each as batches: the batches of
        :meth:`batches` (asked for one example each; a task with its own batching keeps it) dealt
        round-robin, batch ``b`` to group ``b mod groups``, so each group spans the split. Used
        by Shapley runs that sample the documents too (:mod:`coto_tools.shapley.documents`).
        Raises :class:`~coto_tools.errors.OptionError` when there are fewer batches than groups."""
        units = self.batches(split, 1)
        if len(units) < groups:
            raise OptionError(
                f"task {self.name}: split {split!r} comes in {len(units)} batch(es); it cannot be "
                f"cut into {groups} groups of documents"
            )
        return [units[g::groups] for g in range(groups)]

    @abstractmethod
    def train_size(self) -> int: ...

    @abstractmethod
    def train_batch(self, indices: np.ndarray) -> Batch: ...

    @abstractmethod
    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    def build_model_in(self, dtype: torch.dtype | None = None) -> nn.Module:
        """:meth:`build_model` in ``dtype`` (``None``: as built). The default casts the built
        model; tasks that load weights from disk override it to load them in ``dtype`` directly
        (no float32 copy of a large model first)."""
        model = self.build_model()
        return model if dtype is None else model.to(dtype)

    def native_dtype(self) -> torch.dtype | None:
        """The dtype the base model's config names (``--dtype auto`` uses it on CUDA); ``None``:
        none named (float32)."""
        return None

    def extra_metrics(
        self, split: str, logits: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, float]:
        """Metrics beyond accuracy/loss/logprob from the split's ``(n, C)`` logits (in batch
        order), reported beside them (:attr:`Metrics.extra`); default none."""
        return {}

    def metric_sums(self, model: nn.Module, batch: Batch) -> MetricSums | None:
        """Additive metric sums of one batch, for tasks not scored by ``(n, C)`` logits.

        The default (``None``) means: score with :meth:`logits` and the batch labels."""
        return None

    def split_sizes(self) -> dict[str, int]:
        return {s: sum(len(b) for b in self.batches(s)) for s in ("eval", "quick")} | {
            "train": self.train_size()
        }

    def identity(self) -> dict[str, Any]:
        """What defines this task's values beyond its name and options (JSON-able): its labels,
        and in subclasses whatever else a value depends on (e.g. the label prompts' text).
        Caches of values (zero-shot accuracies, Shapley logs) key on it, so a change of meaning
        that keeps the name and options is not served stale values."""
        return {"labels": list(self.labels)}


def uses_metric_sums(task: Task) -> bool:
    """Whether ``task`` overrides :meth:`Task.metric_sums` (the evaluator then adds sums)."""
    return type(task).metric_sums is not Task.metric_sums
