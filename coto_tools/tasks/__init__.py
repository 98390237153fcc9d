"""Built-in tasks and the task registry: ``get_task(name, **variant)`` and ``list_tasks()``.

Tasks are built lazily: constructing one reads no data and builds no model; splits are encoded
on first use and the base model is built by :meth:`Task.build_model`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from coto_tools.errors import TaskError
from coto_tools.tasks.base import Batch, Metrics, Task, metrics_from_logits


def _tiny(**variant: Any) -> Task:
    from coto_tools.tasks.tiny import TinyTask

    return TinyTask(**variant)


def _bbc(subset: str) -> Callable[..., Task]:
    def make(**variant: Any) -> Task:
        from coto_tools.tasks.bbc import BbcTask

        return BbcTask(subset, **variant)

    return make


# name -> (factory, one-line description)
_REGISTRY: dict[str, tuple[Callable[..., Task], str]] = {
    "tiny": (_tiny, "random 2-layer BERT, synthetic tokens, 3 classes (tests, smoke runs)"),
    "bbc-topic": (_bbc("topic"), "all-MiniLM-L6-v2, BBC News, 5 topics"),
    "bbc-a": (_bbc("a"), "all-MiniLM-L6-v2, BBC News, business/politics/tech"),
    "bbc-b": (_bbc("b"), "all-MiniLM-L6-v2, BBC News, sports/entertainment"),
}


def list_tasks() -> dict[str, str]:
    """Known task names -> one-line descriptions (builds nothing)."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def get_task(name: str, **variant: Any) -> Task:
    """The task ``name`` with options ``variant`` (e.g. ``get_task("bbc-topic", shots=8)``).

    Raises :class:`TaskError` for an unknown name (listing the known ones) or an unknown option.
    """
    if name not in _REGISTRY:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY)}")
    allowed = _options_of(name)
    unknown = sorted(set(variant) - set(allowed))
    if unknown:
        raise TaskError(
            f"task {name}: unknown option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    return _REGISTRY[name][0](**variant)


def _options_of(name: str) -> list[str]:
    if name == "tiny":
        from coto_tools.tasks.tiny import TinyTask as cls
    else:
        from coto_tools.tasks.bbc import BbcTask as cls  # type: ignore[assignment]
    params = inspect.signature(cls.__init__).parameters
    return [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


__all__ = ["Batch", "Metrics", "Task", "get_task", "list_tasks", "metrics_from_logits"]
