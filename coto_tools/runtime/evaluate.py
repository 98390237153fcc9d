"""Metrics of each adapter alone (every module on) on one task, one base model, plus the base
model: what ``merge --eval`` prints for the inputs and the merged adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coto_tools.runtime.evaluator import Evaluator
from coto_tools.tasks.base import Metrics, Task


def evaluate_adapters(
    task: Task, adapters: Mapping[str, Any], *, split: str = "eval", dtype: str | None = None
) -> dict[str, Metrics]:
    """Metrics of each adapter alone (all its modules on) on ``task``, one base model, through
    the gated runtime (:class:`~coto_tools.runtime.evaluator.Evaluator`; ``dtype``:
    ``--dtype``); plus ``"base"``."""
    ev = Evaluator(task, dict(adapters), split=split, dtype=dtype)
    try:
        out = {"base": ev.value({})}
        for name, ad in adapters.items():
            out[name] = ev.value({(name, m): 1.0 for m in ad.modules})
    finally:
        ev.close()
    return out
