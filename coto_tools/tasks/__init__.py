"""Built-in tasks and the task registry: ``get_task(name, **variant)`` and ``list_tasks()``.

Tasks are built lazily: constructing one reads no data and builds no model; splits are encoded
on first use and the base model is built by :meth:`Task.build_model`.

A task *spec* ``NAME:{JSON options}`` (:func:`task_spec`) names a task with its options in one
string, e.g. ``user:{"base_model": "tiny", "data": "d.csv"}``; ``get_task`` accepts it wherever
a name is accepted, so analyses that take a task name take user tasks and plugins too.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
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


def _user(**variant: Any) -> Task:
    from coto_tools.tasks.user import user_task

    missing = [k for k in ("base_model", "data") if variant.get(k) is None]
    if missing:
        raise TaskError(f"task user: needs option(s) {', '.join(missing)} (--base-model, --data)")
    return user_task(**variant)


def _plugin(**variant: Any) -> Task:
    from coto_tools.tasks.plugin import plugin_task

    if not isinstance(variant.get("spec"), str):
        raise TaskError("task plugin: needs option spec='module:function' (--task-plugin)")
    return plugin_task(**variant)


# name -> (factory, one-line description)
_REGISTRY: dict[str, tuple[Callable[..., Task], str]] = {
    "tiny": (_tiny, "random 2-layer BERT, synthetic tokens, 3 classes (tests, smoke runs)"),
    "bbc-topic": (_bbc("topic"), "all-MiniLM-L6-v2, BBC News, 5 topics"),
    "bbc-a": (_bbc("a"), "all-MiniLM-L6-v2, BBC News, business/politics/tech"),
    "bbc-b": (_bbc("b"), "all-MiniLM-L6-v2, BBC News, sports/entertainment"),
    "user": (_user, "your transformers model directory + JSONL/CSV data (--base-model, --data)"),
    "plugin": (_plugin, "a Task returned by your function (--task-plugin module:function)"),
}


# tasks that exist only with options (no default data or model): not listed by list_tasks
_NEEDS_OPTIONS = ("user", "plugin")


def list_tasks() -> dict[str, str]:
    """Built-in task names -> one-line descriptions (builds nothing). ``user`` and ``plugin``
    need options (see :func:`task_spec`) and are not listed."""
    return {name: desc for name, (_, desc) in _REGISTRY.items() if name not in _NEEDS_OPTIONS}


def get_task(name: str, **variant: Any) -> Task:
    """The task ``name`` with options ``variant`` (e.g. ``get_task("bbc-topic", shots=8)``).

    Raises :class:`TaskError` for an unknown name (listing the known ones) or an unknown option.
    ``name`` may be a spec ``NAME:{JSON options}`` (:func:`task_spec`); ``variant`` adds to it.
    """
    if name not in _REGISTRY and ":" in name:
        name, options = parse_task_spec(name)
        variant = {**options, **variant}
    if name not in _REGISTRY:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    allowed = _options_of(name)
    unknown = sorted(set(variant) - set(allowed))
    if unknown:
        raise TaskError(
            f"task {name}: unknown option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    return _REGISTRY[name][0](**variant)


def task_spec(name: str, variant: Mapping[str, Any] | None = None) -> str:
    """``NAME:{JSON}`` naming task ``name`` with options ``variant`` (just ``name`` if none)."""
    if not variant:
        return name
    return f"{name}:{json.dumps(dict(variant), sort_keys=True, separators=(',', ':'))}"


def parse_task_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Inverse of :func:`task_spec`: ``(name, options)``."""
    name, _, raw = spec.partition(":")
    try:
        options = json.loads(raw)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise TaskError(
            f"task {spec!r}: expected NAME or NAME:{{JSON options}}, e.g. "
            'bbc-topic:{"shots": 8}; known tasks: ' + ", ".join(list_tasks())
        )
    return name, options


def _options_of(name: str) -> list[str]:
    if name == "user":
        from coto_tools.tasks.user import OPTION_NAMES

        return list(OPTION_NAMES)
    if name == "plugin":
        return ["spec", "options"]
    if name == "tiny":
        from coto_tools.tasks.tiny import TinyTask as cls
    else:
        from coto_tools.tasks.bbc import BbcTask as cls  # type: ignore[assignment]
    params = inspect.signature(cls.__init__).parameters
    return [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


__all__ = [
    "Batch",
    "Metrics",
    "Task",
    "get_task",
    "list_tasks",
    "metrics_from_logits",
    "parse_task_spec",
    "task_spec",
]
