"""The CoTo trainer (arXiv 2506.05713): activation schedule, gate draws, a minimal loop.

``train(TrainConfig(task=...), progress=True) -> TrainResult``; ``result.save(dir)`` writes a
PEFT adapter + ``coto.json`` + ``train_log.csv``; :func:`load_run` reads one back.
"""

from __future__ import annotations

from coto_tools.train.config import GroupBy, Method, TrainConfig
from coto_tools.train.loop import LogRow, TrainResult, final_metrics, train
from coto_tools.train.lr import LrPlan, LrSchedule
from coto_tools.train.run import load_run, read_record, save_run
from coto_tools.train.schedule import CoToSchedule, Shape, sample_active
from coto_tools.train.targets import resolve_targets

__all__ = [
    "CoToSchedule",
    "GroupBy",
    "LogRow",
    "LrPlan",
    "LrSchedule",
    "Method",
    "Shape",
    "TrainConfig",
    "TrainResult",
    "final_metrics",
    "load_run",
    "read_record",
    "resolve_targets",
    "sample_active",
    "save_run",
    "train",
]
