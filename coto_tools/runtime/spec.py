"""What an evaluator is and where it runs, as plain data: :class:`ExecutorConfig` (local or Ray,
device, dtype, workers), :class:`EvaluatorSpec` (everything needed to rebuild an evaluator
elsewhere) and :class:`ExecutorError`.

Both the local path (:mod:`coto_tools.runtime.executor`) and the Ray pool
(:mod:`coto_tools.runtime.ray_executor`) build on these; neither imports the other's module
for them (``executor.make_evaluator`` loads the Ray pool only when asked for it). Import them
from :mod:`coto_tools.runtime.executor`, which re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.errors import CotoError, OptionError, enum_option
from coto_tools.runtime.device import AUTO, CPU, DeviceLike, check_device, resolve_device
from coto_tools.runtime.dtype import check_dtype
from coto_tools.tasks.base import SPLITS

if TYPE_CHECKING:
    from coto_tools.runtime.evaluator import Evaluator

AdapterSource = LoraAdapter | str  # an adapter by value, or a checkpoint path workers can read


class ExecutorError(CotoError):
    """The executor failed (Ray missing or unreachable, workers dying again and again)."""


class ExecutorKind(str, Enum):
    local = "local"
    ray = "ray"


@dataclass(frozen=True)
class ExecutorConfig:
    """``kind``: local or ray; ``address``: the Ray cluster (``auto``, ``ray://host:10001``,
    ``host:6379``; ``None`` starts a local Ray instance); ``workers``: actors (model replicas;
    ``None``: one per GPU of the cluster, else one per CPU, at most 64); ``gpus_per_worker``:
    ``None`` = 1 when the cluster has GPUs, else 0; ``cpus_per_worker``: CPUs reserved (and torch
    threads) per actor; ``max_retries``: resubmissions of one chunk after its worker died;
    ``device``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    Local: where the evaluator runs (a CUDA request is checked here). Ray: ``auto`` and ``cuda``
    give each actor one GPU when the cluster has GPUs (``cuda`` requires them) and run it
    there; ``cpu`` reserves no GPU; ``cuda:N`` is refused (Ray picks each actor's GPU).
    ``dtype``: the dtype base models are built in (``auto``: float32 on the CPU, the model
    config's dtype on CUDA; see :mod:`coto_tools.runtime.dtype`), on every worker."""

    kind: ExecutorKind = ExecutorKind.local
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: int = 1
    max_retries: int = 3
    device: str = AUTO
    dtype: str = AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", enum_option(ExecutorKind, self.kind, "--executor"))
        if self.workers is not None and self.workers < 1:
            raise OptionError(f"--workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise OptionError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker < 1:
            raise OptionError(f"cpus_per_worker must be >= 1, got {self.cpus_per_worker}")
        if self.max_retries < 0:
            raise OptionError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.kind is ExecutorKind.local and (self.address is not None or self.workers):
            raise OptionError("--ray-address and --workers need --executor ray")
        object.__setattr__(self, "device", check_device(self.device))
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        if self.kind is ExecutorKind.local and self.device not in (AUTO, CPU):
            resolve_device(self.device)  # a CUDA request without CUDA: one clear error, now
        if self.kind is ExecutorKind.ray and ":" in self.device:
            raise OptionError(
                f"--device {self.device} with --executor ray: each worker uses the GPU Ray gives "
                "it; use --device cuda (or auto)"
            )

    @property
    def is_local(self) -> bool:
        return self.kind is ExecutorKind.local


LOCAL = ExecutorConfig()


def executor_from_cli(
    kind: ExecutorKind | str,
    address: str | None,
    workers: int | None,
    device: str = AUTO,
    dtype: str = AUTO,
) -> ExecutorConfig:
    """The ``--executor/--ray-address/--workers/--device/--dtype`` options of ``shapley``,
    ``prune``, ``lmc`` and ``reproduce`` as a config (validated: a local CUDA request without
    CUDA fails here, before anything is written). Run modules pass its device and dtype to their
    local evaluators explicitly (:func:`local_device`, :func:`local_dtype`)."""
    return ExecutorConfig(
        kind=kind,  # type: ignore[arg-type]  # a string is checked (and converted) there
        address=address,
        workers=workers,
        device=device,
        dtype=dtype,
    )


def local_device(executor: ExecutorConfig | None) -> str | None:
    """The device a local evaluator of ``executor`` should use (``None``: no executor given,
    leave the model where it is); pass it as ``Evaluator(..., device=local_device(executor))``."""
    return None if executor is None or not executor.is_local else executor.device


def local_dtype(executor: ExecutorConfig | None) -> str | None:
    """The dtype request a local evaluator of ``executor`` should use (``None``: no executor
    given, the task's model as built): ``Evaluator(..., dtype=local_dtype(executor))``."""
    return None if executor is None or not executor.is_local else executor.dtype


def planned_dtype(executor: ExecutorConfig | None, task: Any) -> str:
    """The dtype (name) the evaluators of ``executor`` will build ``task``'s model in, known
    before any is built (for a run's fingerprint): ``float32`` unless ``--dtype`` asks otherwise
    (``auto`` on CUDA: the model config's dtype; a Ray ``auto``/``cuda`` device counts as CUDA
    when this machine has CUDA)."""
    import torch

    from coto_tools.runtime.dtype import dtype_name, resolve_dtype

    if executor is None:
        return "float32"
    if executor.device == CPU:
        device = "cpu"
    elif executor.device == AUTO:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = "cuda"
    native = task.native_dtype() if executor.dtype == AUTO else None
    return dtype_name(resolve_dtype(executor.dtype, device, native))


@dataclass(frozen=True)
class EvaluatorSpec:
    """What a worker needs to build its own :class:`Evaluator` (all picklable).

    ``task``: a task spec string (``NAME`` or ``NAME:{JSON}``, see
    :func:`coto_tools.tasks.task_spec`); it must build the same task (same data, same base model
    weights) on every machine. ``adapters``: ``(branch name, adapter)`` pairs, each adapter a
    :class:`LoraAdapter` (shipped by value through the object store) or a checkpoint path (read
    by each worker: it must exist there). ``evaluator_options``: extra keyword options of
    :class:`Evaluator` (``reuse_prefix``, ``prefix_cache_mb``, ``text_chunk``, ``dtype``)."""

    task: str
    adapters: tuple[tuple[str, AdapterSource], ...]
    split: str = "eval"
    batch_size: int = 64
    evaluator_options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        adapters = self.adapters
        if isinstance(adapters, Mapping):
            adapters = tuple(adapters.items())
        adapters = tuple((str(n), str(a) if isinstance(a, Path) else a) for n, a in adapters)
        object.__setattr__(self, "adapters", adapters)
        if isinstance(self.evaluator_options, Mapping):
            object.__setattr__(self, "evaluator_options", tuple(self.evaluator_options.items()))
        if not adapters:
            raise OptionError("no adapters to evaluate")
        names = [n for n, _ in adapters]
        if len(set(names)) != len(names):
            raise OptionError(f"adapter names must be unique, got {names}")
        bad = [n for n, a in adapters if not isinstance(a, (LoraAdapter, str))]
        if bad:
            raise OptionError(f"adapter(s) {bad}: expected a LoraAdapter or a checkpoint path")
        if self.split not in SPLITS:
            raise OptionError(f"split {self.split!r}: allowed {', '.join(SPLITS)}")
        if self.batch_size <= 0:
            raise OptionError(f"batch_size must be positive, got {self.batch_size}")
        allowed = {"reuse_prefix", "prefix_cache_mb", "text_chunk", "logits_cache", "dtype"}
        unknown = sorted({k for k, _ in self.evaluator_options} - allowed)
        if unknown:
            raise OptionError(f"unknown evaluator option(s) {unknown}; allowed: {sorted(allowed)}")

    def load_adapters(self) -> dict[str, LoraAdapter]:
        """The adapters by name (paths are read here)."""
        from coto_tools.adapters.io import load_adapter

        return {n: a if isinstance(a, LoraAdapter) else load_adapter(a) for n, a in self.adapters}

    def build(
        self, *, model: Any = None, device: DeviceLike | None = None, dtype: str | None = None
    ) -> Evaluator:
        """A local :class:`Evaluator` of this spec on ``device`` (what every worker builds);
        ``dtype`` overrides the spec's ``dtype`` evaluator option."""
        from coto_tools.runtime.evaluator import Evaluator
        from coto_tools.tasks import get_task

        adapters = self.load_adapters()
        named: LoraAdapter | dict[str, LoraAdapter] = adapters
        options = dict(self.evaluator_options)
        if dtype is not None:
            options["dtype"] = dtype
        return Evaluator(
            get_task(self.task),
            named,
            split=self.split,
            batch_size=self.batch_size,
            model=model,
            device=device,
            **options,
        )
