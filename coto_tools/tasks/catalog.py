"""What ``coto-tools tasks`` shows: each task's sizes, labels and (cached) zero-shot accuracy.

Zero-shot accuracy = the base model with no adapter on the ``eval`` split. Computing it takes a
full evaluation (seconds for the BBC tasks), so it is computed only on request and then kept in
``<cache dir>/zero_shot.json`` (cache dir: ``$COTO_TOOLS_CACHE``, else
``$XDG_CACHE_HOME/coto-tools``, else ``~/.cache/coto-tools``), keyed by task name, identity
(labels, prompt texts: :meth:`Task.identity`), options and
split sizes (and the dtype, when not float32: ``--dtype``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from coto_tools.adapters.atomic import atomic_write_text
from coto_tools.errors import OptionError
from coto_tools.runtime.dtype import dtype_name, resolve_dtype
from coto_tools.tasks import get_task, list_tasks
from coto_tools.tasks.base import Metrics, Task, metrics_from_logits
from coto_tools.tasks.presets import preset_for

ZERO_SHOT_FILE = "zero_shot.json"


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    labels: tuple[str, ...]
    sizes: dict[str, int]
    variant: dict[str, Any] = field(default_factory=dict)
    zero_shot: dict[str, float] | None = None  # accuracy, logprob, n (eval split)
    preset: dict[str, Any] | None = None  # measured default preset (coto_tools.tasks.presets)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "labels": list(self.labels),
            "sizes": self.sizes,
            "variant": self.variant,
            "zero_shot": self.zero_shot,
            "preset": self.preset,
        }


def cache_dir() -> Path:
    env = os.environ.get("COTO_TOOLS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "coto-tools"


def zero_shot_metrics(
    task: Task, split: str = "eval", batch_size: int = 64, *, dtype: str = "float32"
) -> Metrics:
    """Metrics of the base model (no adapter) on ``split``: one pass, logits concatenated; the
    model built in ``dtype`` (``auto``, ``float32``, ``bfloat16``, ``float16``; on the CPU, so
    ``auto`` is float32)."""
    model = task.build_model_in(resolve_dtype(dtype, "cpu"))
    with torch.inference_mode():
        batches = task.batches(split, batch_size)
        logits = torch.cat([task.logits(model, b) for b in batches])
    return metrics_from_logits(logits.float(), torch.cat([b.labels for b in batches]))


def _cache_key(
    name: str,
    variant: Mapping[str, Any],
    sizes: Mapping[str, int],
    dtype: str = "float32",
    identity: Mapping[str, Any] | None = None,
) -> str:
    key: dict[str, Any] = {"task": name, "variant": dict(variant), "sizes": dict(sizes)}
    if identity is not None:  # the labels and prompt texts (Task.identity)
        key["identity"] = dict(identity)
    if dtype != "float32":  # float32 entries keep the key they had before --dtype existed
        key["dtype"] = dtype
    return json.dumps(key, sort_keys=True)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}  # no cache yet, or an unreadable one: recompute on request
    return data if isinstance(data, dict) else {}


def describe_tasks(
    names: Iterable[str] | None = None,
    *,
    variant: Mapping[str, Any] | None = None,
    zero_shot: bool = False,
    cache: Path | None = None,
    dtype: str = "float32",
) -> list[TaskInfo]:
    """One :class:`TaskInfo` per task (default: all). ``zero_shot``: compute missing zero-shot
    accuracies (and store them); otherwise only cached ones are shown. ``dtype``: the base
    model's dtype for them (``--dtype``; each dtype is cached on its own)."""
    dtype = dtype_name(resolve_dtype(dtype, "cpu"))  # checks the spelling; auto -> float32
    names = list(list_tasks()) if names is None else list(names)
    variant = dict(variant or {})
    path = (cache_dir() if cache is None else cache) / ZERO_SHOT_FILE
    stored = _read_cache(path)
    changed = False
    out = []
    for name in names:
        task = get_task(name, **variant)
        sizes = task.split_sizes()
        key = _cache_key(name, variant, sizes, dtype, task.identity())
        zs = stored.get(key)
        if zs is None and zero_shot:
            m = zero_shot_metrics(task, dtype=dtype)
            zs = {"accuracy": m.accuracy, "logprob": m.logprob, "n": m.n}
            stored[key] = zs
            changed = True
        desc = task.description or list_tasks().get(name, "")
        preset = preset_for(name, variant)
        summary = None if preset is None else preset.summary()
        out.append(TaskInfo(name, desc, tuple(task.labels), sizes, variant, zs, summary))
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(stored, indent=1, sort_keys=True))
    return out


def parse_options(items: Iterable[str]) -> dict[str, Any]:
    """``["shots=8", "prompts=letters"]`` -> ``{"shots": 8, "prompts": "letters"}`` (JSON values
    where they parse, strings otherwise)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise OptionError(f"task option {item!r}: expected KEY=VALUE, e.g. shots=8")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def render(infos: list[TaskInfo]) -> str:
    rows = [("task", "train", "eval", "quick", "zero-shot", "labels")]
    for i in infos:
        zs = "-" if i.zero_shot is None else f"{i.zero_shot['accuracy']:.3f}"
        rows.append(
            (i.name, str(i.sizes["train"]), str(i.sizes["eval"]), str(i.sizes["quick"]), zs,
             ", ".join(i.labels))
        )  # fmt: skip
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(r[c].ljust(widths[c]) for c in range(len(widths))) + "  " + r[-1] for r in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def render_presets(infos: list[TaskInfo]) -> str:
    """Lines describing the measured default preset of the listed tasks ("" if none)."""
    lines: list[str] = []
    for i in infos:
        preset = preset_for(i.name, i.variant) if i.preset is not None else None
        if preset is not None:
            lines += preset.lines()
    return "\n".join(lines)
