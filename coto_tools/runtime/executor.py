"""Where configurations are evaluated: in this process (``local``) or on a Ray cluster (``ray``).

An analysis (Shapley, pruning, LMC) samples configurations in the driver and asks an evaluator
for their metrics. :func:`make_evaluator` builds that evaluator from an :class:`EvaluatorSpec`
(everything needed to rebuild it elsewhere: a task spec string, the adapters by path or by
value, the split, the batch size) and an :class:`ExecutorConfig`:

- ``local``: a plain :class:`~coto_tools.runtime.evaluator.Evaluator` on ``executor.device``;
- ``ray``: a :class:`~coto_tools.runtime.ray_executor.RayEvaluator` with the same public interface
  (``value``, ``value_batch``, ``value_mask``, ``key``, ``n_forward``, ``close``) that keeps the
  cache in the driver and sends uncached configurations to a pool of Ray actors, each holding one
  model replica (on its own GPU when the cluster has GPUs, else on the CPU). Sampling stays in
  the driver, so a run equals the local run with the same seed.

:class:`Recorder` lists the configurations a deterministic piece of analysis code would ask for
(it answers every ``value`` with a placeholder), so that a driver can hand them to
``value_batch`` at once (evaluated in parallel) and then run the code for real on cache hits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from coto_tools.runtime.spec import (
    LOCAL,
    AdapterSource,
    EvaluatorSpec,
    ExecutorConfig,
    ExecutorError,
    ExecutorKind,
    executor_from_cli,
    local_device,
    local_dtype,
    planned_dtype,
)
from coto_tools.tasks.base import Metrics

if TYPE_CHECKING:
    from coto_tools.runtime.evaluator import Config


def make_evaluator(
    spec: EvaluatorSpec, executor: ExecutorConfig | None = None, *, model: Any = None
) -> Any:
    """An evaluator of ``spec`` run by ``executor`` (``None``: local, ``--device auto``).
    ``model``: a base model to reuse (local only; moved to the device)."""
    executor = executor or LOCAL
    if executor.is_local:
        return spec.build(model=model, device=executor.device, dtype=executor.dtype)
    from coto_tools.runtime.ray_executor import RayEvaluator

    return RayEvaluator(spec, executor)


_PLACEHOLDER = Metrics(accuracy=0.0, loss=0.0, logprob=0.0, n=0)


class Recorder:
    """Answers ``value(config)`` with a placeholder and records ``config`` (see module doc).

    Use only on code whose choice of configurations does not depend on the values returned."""

    def __init__(self) -> None:
        self.configs: list[Config] = []

    def value(self, config: Config) -> Metrics:
        self.configs.append(dict(config))
        return _PLACEHOLDER

    def value_batch(self, configs: Sequence[Config]) -> list[Metrics]:
        return [self.value(c) for c in configs]


__all__ = [
    "LOCAL",
    "AdapterSource",
    "EvaluatorSpec",
    "ExecutorConfig",
    "ExecutorError",
    "ExecutorKind",
    "Recorder",
    "executor_from_cli",
    "local_device",
    "local_dtype",
    "planned_dtype",
    "make_evaluator",
]
