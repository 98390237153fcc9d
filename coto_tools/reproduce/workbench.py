"""What the stages of one reproduction share instead of rebuilding: tasks, base models, the
zero-shot metrics, and one evaluator over the main runs for pruning and Shapley.

Every stage evaluates on the same few tasks (the main task and the two cross tasks, each with
the preset's options). A :class:`Workbench` keeps

* one task object per task spec (``NAME:{options}``): its corpus is read and its splits are
  tokenised once, not once per training run, checkpoint and stage;
* one base model per task: whoever uses it injects adapters and removes them when done (the
  runtime restores the base bit for bit), so the model handed out again is the model as built.
  :meth:`Workbench.model` refuses a model that still carries adapters (a user did not close);
* the evaluation device (``Workbench(device=)``, ``reproduce --device``): the workbench's
  evaluators run there. On the CPU they use the shared base model; on another device each task
  gets a second base model, built for the evaluators and moved there
  (:meth:`Workbench.eval_model`), so the model :meth:`Workbench.model` hands to training never
  leaves the CPU (training runs on the CPU whatever the device);
* the zero-shot metrics per (task, split): the base model's evaluation, the same for every
  training run of a task, measured by the first run and handed to the others;
* one :class:`~coto_tools.runtime.evaluator.Evaluator` holding every main run as a named
  branch (:meth:`Workbench.runs_evaluator`), through which Shapley and pruning evaluate: a
  configuration both need (a layer coalition such as ``low`` or ``everyother``, all, none) is
  evaluated once, and the prefix cache is shared. A branch alone (the others at gate exactly
  0.0, which skips them) computes what a one-adapter evaluator computes, bit for bit.

Everything is built lazily: a rerun that reuses every stage builds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.errors import CotoError
from coto_tools.runtime.device import DeviceLike, resolve_device
from coto_tools.runtime.dtype import resolve_dtype
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.tasks.base import Metrics, Task


def same_adapter(a: LoraAdapter, b: LoraAdapter) -> bool:
    """True if ``a`` and ``b`` hold the same modules with bit-identical factors and scaling."""
    if set(a.modules) != set(b.modules):
        return False
    for name, m in a.modules.items():
        o = b.modules[name]
        if (m.alpha, m.use_rslora) != (o.alpha, o.use_rslora):
            return False
        if not (torch.equal(m.A, o.A) and torch.equal(m.B, o.B)):
            return False
    return True


RUNS_LOGITS_CACHE = 8192
"""Configurations whose logits the main runs' evaluator keeps (for per-document results)."""


class Workbench:
    """Shared tasks, base models, zero-shot metrics and the main runs' evaluator (see module
    doc). ``device``: where the evaluators run (``auto``, ``cpu``, ``cuda``, ``cuda:N``;
    ``None``: on the shared model where it is, the CPU); checked here. Call :meth:`close` when
    the reproduction ends."""

    def __init__(self, device: DeviceLike | None = None, dtype: str | None = None) -> None:
        self.device: torch.device | None = None if device is None else resolve_device(device)
        self.dtype = dtype  # --dtype of the evaluation models (None/auto/float32 on the CPU: 32)
        self._tasks: dict[str, Task] = {}
        self._models: dict[int, nn.Module] = {}
        self._eval_models: dict[int, nn.Module] = {}  # per task, on a non-CPU device
        self._zero_shot: dict[tuple[int, str], Metrics] = {}
        self._runs_ev: Evaluator | None = None
        self._runs_key: tuple[Any, ...] | None = None
        self.tasks_built = 0
        self.models_built = 0

    # -- tasks and models ---------------------------------------------------------------------
    def get_task(self, name: str, **variant: Any) -> Task:
        """``coto_tools.tasks.get_task(name, **variant)``, one object per spec."""
        from coto_tools.tasks import get_task, task_spec

        spec = task_spec(name, variant)
        if spec not in self._tasks:
            self._tasks[spec] = get_task(name, **variant)
            self.tasks_built += 1
        return self._tasks[spec]

    def _own(self, task: Task) -> None:
        if not any(t is task for t in self._tasks.values()):
            raise CotoError(f"task {task.name}: not a task of this workbench (use get_task)")

    def model(self, task: Task) -> nn.Module:
        """The base model of ``task`` (a task from :meth:`get_task`) on the CPU, built on first
        use; the caller removes its adapters when done (``Evaluator.close``,
        ``GatedModel.remove``)."""
        self._own(task)
        model = self._models.get(id(task))
        if model is None:
            model = self._models[id(task)] = task.build_model()
            self.models_built += 1
        return _clean(task, model)

    def eval_model(self, task: Task) -> nn.Module:
        """The base model the evaluators of ``task`` use: :meth:`model` when the device is the
        CPU (or ``None``), else a second one built for the evaluators and moved to the device."""
        want = None
        if self.dtype is not None:
            where = self.device if self.device is not None else torch.device("cpu")
            want = resolve_dtype(self.dtype, where, task.native_dtype())
        if (self.device is None or self.device.type == "cpu") and want in (None, torch.float32):
            return self.model(task)
        self._own(task)
        model = self._eval_models.get(id(task))
        if model is None:
            built = task.build_model_in(want)
            model = self._eval_models[id(task)] = built.to(self.device or torch.device("cpu"))
            self.models_built += 1
        return _clean(task, model)

    def evaluator(self, task: Task, adapters: Mapping[str, LoraAdapter], split: str) -> Evaluator:
        """An :class:`Evaluator` of ``adapters`` on the shared evaluation model of ``task``, on
        the workbench's device (close it)."""
        if self._runs_ev is not None and self._runs_ev.task is task:
            self.close_runs_evaluator()
        return self._evaluator(task, adapters, split)

    def _evaluator(
        self,
        task: Task,
        adapters: Mapping[str, LoraAdapter],
        split: str,
        *,
        logits_cache: int = 64,
    ) -> Evaluator:
        model = self.eval_model(task)
        return Evaluator(
            task,
            dict(adapters),
            split=split,
            model=model,
            device=self.device,
            logits_cache=logits_cache,
        )

    # -- zero-shot ----------------------------------------------------------------------------
    def zero_shot(self, task: Task, split: str) -> Metrics | None:
        """The base model's metrics on ``split`` of ``task`` if a run measured them."""
        self._own(task)
        return self._zero_shot.get((id(task), split))

    def record_zero_shot(self, task: Task, split: str, metrics: Metrics) -> None:
        self._own(task)
        self._zero_shot.setdefault((id(task), split), metrics)

    # -- the main runs' evaluator -------------------------------------------------------------
    def runs_evaluator(
        self, task: Task, adapters: Mapping[str, LoraAdapter], split: str
    ) -> Evaluator:
        """One evaluator holding every adapter of ``adapters`` (run name -> adapter) as a named
        branch, kept open (and its caches with it) until another set is asked for or
        :meth:`close`; callers must not close it."""
        key = (id(task), split, tuple(adapters))
        if self._runs_ev is not None and self._runs_key == key:
            held = self._runs_ev.adapters
            if all(same_adapter(held[n], a) for n, a in adapters.items()):
                return self._runs_ev
        self.close_runs_evaluator()
        # logits of every configuration kept: pruning reads its per-document results back
        # (a few KiB per configuration) without evaluating again
        self._runs_ev = self._evaluator(task, adapters, split, logits_cache=RUNS_LOGITS_CACHE)
        self._runs_key = key
        return self._runs_ev

    def branch_of(self, ev: Evaluator, adapter: LoraAdapter) -> str:
        """The branch of ``ev`` holding exactly ``adapter`` (bit for bit)."""
        for name, held in ev.adapters.items():
            if same_adapter(held, adapter):
                return name
        raise CotoError(f"no branch of the shared evaluator holds adapter {adapter.source}")

    def close_runs_evaluator(self) -> None:
        if self._runs_ev is not None:
            self._runs_ev.close()
        self._runs_ev = None
        self._runs_key = None

    def close(self) -> None:
        self.close_runs_evaluator()
        self._models.clear()
        self._eval_models.clear()
        self._zero_shot.clear()
        self._tasks.clear()


def _clean(task: Task, model: nn.Module) -> nn.Module:
    """``model``, refused if it still carries adapters (an evaluator was not closed)."""
    from coto_tools.runtime.gated import GatedLoraLinear

    if any(isinstance(m, GatedLoraLinear) for m in model.modules()):
        raise CotoError(
            f"task {task.name}: its shared base model still carries adapters (an evaluator "
            "was not closed)"
        )
    return model


class BranchView:
    """One branch of a shared evaluator seen as a one-adapter evaluator: ``value({module: g})``
    means ``{(branch, module): g}``; ``close()`` leaves the shared evaluator open."""

    def __init__(self, evaluator: Evaluator, branch: str) -> None:
        if branch not in evaluator.adapters:
            raise CotoError(f"no branch {branch!r}; branches: {sorted(evaluator.adapters)}")
        self.evaluator = evaluator
        self.branch = branch

    def _config(self, gates: Mapping[Any, float]) -> dict[tuple[str, str], float]:
        out = {}
        for k, g in gates.items():
            if isinstance(k, tuple):
                raise CotoError(f"branch view of {self.branch!r}: key {k!r} names a branch")
            out[(self.branch, k)] = g
        return out

    def value(self, gates: Mapping[Any, float]) -> Metrics:
        return self.evaluator.value(self._config(gates))

    def value_batch(self, configs: Sequence[Mapping[Any, float]]) -> list[Metrics]:
        return self.evaluator.value_batch([self._config(c) for c in configs])

    def close(self) -> None:
        """Nothing: the shared evaluator belongs to the workbench."""
