"""Run directories: a PEFT adapter + ``coto.json`` + ``train_log.csv``, and how to reload them.

Layout of ``DIR`` (written atomically: built in a temporary sibling, then renamed)::

    adapter_model.safetensors   PEFT's LoRA weights
    adapter_config.json         PEFT's config; base_model_name_or_path = the task's base model
    coto.json                   task + variant, method, every hyperparameter, seed, wall time,
                                final and zero-shot metrics, schedule, groups, targets
    train_log.csv               step, loss, p, n_active, active_groups, lr

Every later command finds what it needs in ``DIR`` alone: :func:`load_run` rebuilds the task
from ``coto.json``.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coto_tools.adapters import load_adapter, save_adapter
from coto_tools.adapters.lora import LoraAdapter
from coto_tools.adapters.players import Players
from coto_tools.errors import CheckpointError
from coto_tools.tasks.base import Metrics, Task
from coto_tools.train.config import TrainConfig
from coto_tools.train.lr import LrPlan
from coto_tools.train.schedule import CoToSchedule

LOG_FIELDS = ("step", "loss", "p", "n_active", "active_groups", "lr")


@dataclass(frozen=True)
class LogRow:
    step: int
    loss: float
    p: float
    n_active: int
    active_groups: str
    lr: float


@dataclass(frozen=True)
class TrainResult:
    """A finished run: the adapter, its metrics, the per-step log and the ``coto.json`` record."""

    adapter: LoraAdapter
    config: TrainConfig
    metrics: Metrics
    zero_shot: Metrics
    log: tuple[LogRow, ...]
    record: dict[str, Any]
    wall_time_s: float

    def save(self, out: Any, *, force: bool = False) -> Any:
        """Write the run directory (see :func:`save_run`)."""
        return save_run(self, out, force=force)


RUN_FORMAT = "coto-tools/train-run"
RUN_VERSION = 1
RUN_FILE = "coto.json"
LOG_FILE = "train_log.csv"


def make_record(
    config: TrainConfig,
    *,
    task: Task,
    base_model: str | None,
    targets: Sequence[str],
    players: Players,
    schedule: CoToSchedule,
    lr_plan: LrPlan,
    batch_size: int,
    metrics: Metrics,
    zero_shot: Metrics,
    wall_time_s: float,
    train_time_s: float,
    log: Sequence[LogRow],
) -> dict[str, Any]:
    """The ``coto.json`` record of a run."""
    from coto_tools import __version__

    losses = [r.loss for r in log]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "task": config.task,
        "task_variant": dict(config.task_variant),
        "task_description": getattr(task, "description", ""),
        "labels": list(getattr(task, "labels", ())),
        "base_model": base_model,
        "method": config.method.value,
        "seed": config.seed,
        "steps": config.steps,
        "dtype": config.dtype,  # also in "config" unless float32 (see TrainConfig.dtype)
        "config": config.as_dict(),
        "effective_batch_size": batch_size,
        "targets": list(targets),
        "groups": {
            "by": players.grouping,
            "names": list(players.names),
            "members": [list(m) for m in players.members],
        },
        "schedule": {
            "p": schedule.as_dict(),
            "lr": {
                "lr": lr_plan.lr,
                "schedule": lr_plan.schedule.value,
                "warmup_steps": lr_plan.warmup_steps,
                "floor": lr_plan.floor,
            },
        },
        "eval_split": config.eval_split,
        "metrics": metrics.as_dict(),
        "zero_shot": zero_shot.as_dict(),
        "train_loss_last10pct": sum(tail) / len(tail) if tail else None,
        "mean_active_fraction": (
            sum(r.n_active for r in log) / (len(log) * len(players)) if log else None
        ),
        "wall_time_s": round(wall_time_s, 3),
        "train_time_s": round(train_time_s, 3),
        "step_time_s": round(train_time_s / max(1, len(log)), 4),
        "environment": {
            "coto_tools": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
        },
    }


def log_csv(rows: Sequence[LogRow]) -> str:
    """``train_log.csv`` text: step, loss, p, n_active, active_groups, lr."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LOG_FIELDS)
    for r in rows:
        w.writerow([r.step, repr(r.loss), repr(r.p), r.n_active, r.active_groups, repr(r.lr)])
    return buf.getvalue()


def save_run(result: TrainResult, out: str | Path, *, force: bool = False) -> Path:
    """Write ``result`` as a run directory ``out`` (refused if it exists, unless ``force`` and
    coto-tools wrote it: :func:`~coto_tools.adapters.outguard.check_output`)."""
    from coto_tools.adapters.outguard import check_output

    check_output(out, force=force)
    return save_adapter(
        result.adapter,
        out,
        force=force,
        base_model=result.record.get("base_model"),
        extra_files={
            RUN_FILE: json.dumps(result.record, indent=2) + "\n",
            LOG_FILE: log_csv(result.log),
        },
    )


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """``coto.json`` of a run directory, checked for the keys later commands rely on."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a coto-tools run directory (no {RUN_FILE})")
    from coto_tools.jsonio import read_json

    rec = read_json(path, optional={"task": str, "method": str, "config": dict})
    missing = [k for k in ("format", "task", "task_variant", "method", "config") if k not in rec]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing}")
    if rec["format"] != RUN_FORMAT:
        raise CheckpointError(f"{path}: format {rec['format']!r}, expected {RUN_FORMAT!r}")
    if not isinstance(rec["task_variant"], dict):
        raise CheckpointError(f"{path}: task_variant is not an object")
    return rec


def load_run(run_dir: str | Path) -> tuple[LoraAdapter, Task, dict[str, Any]]:
    """``(adapter, task, coto_json)`` of a run directory; the task is rebuilt from ``coto.json``."""
    from coto_tools.tasks import get_task

    rec = read_record(run_dir)
    adapter = load_adapter(run_dir)
    task = get_task(rec["task"], **rec["task_variant"])
    return adapter, task, rec
