"""Command-line options of user tasks, shared by ``shapley``, ``prune``, ``lmc`` and ``merge``.

Each command declares the options below (``--base-model``, ``--data``, ``--label-prompts``,
``--max-length``, ``--batch-size``, ``--limit``, ``--task-plugin``) and turns them into a task
spec with :func:`user_task_spec`; the spec goes where a task name goes (``--task``), so the
analyses, their records and reruns treat user tasks like built-in ones.

``--base-model`` defaults to ``base_model_name_or_path`` of the first checkpoint's adapter
config, resolved offline: a local directory, else a snapshot in the local Hugging Face cache.
A checkpoint's ``modules_to_save`` (e.g. a trained classifier) are loaded into the base model
(``head_from``); checkpoints whose ``modules_to_save`` differ cannot share one task.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import typer

from coto_tools.errors import CheckpointError, OptionError, TaskError
from coto_tools.tasks.base import Metrics

BASE_MODEL = typer.Option(
    None,
    "--base-model",
    help="User task: a local transformers model directory (default: the adapter config's "
    "base_model_name_or_path, from a local dir or the local HF cache; offline).",
)
DATA = typer.Option(
    None,
    "--data",
    help="User task: JSONL or CSV with text[,label]: text+label = sequence classification "
    "with the model's head; text only = causal-LM loss/perplexity; prompt,completion / "
    "messages / question,choices,answer = causal LM scored on the completion, the assistant "
    "turns, or by choice log-likelihood (docs/task_plugins.md).",
)
LABEL_PROMPTS = typer.Option(
    None,
    "--label-prompts",
    help='User task: label-prompt head instead of the model\'s head, e.g. "This is about {}."',
)
MAX_LENGTH = typer.Option(128, "--max-length", help="User task: tokens kept per text.")
BATCH_SIZE = typer.Option(16, "--batch-size", help="User task: texts per forward pass.")
LIMIT = typer.Option(None, "--limit", help="User task: use only the first N rows of --data.")
TASK_PLUGIN = typer.Option(
    None,
    "--task-plugin",
    help="module:function (or file.py:function) returning a coto_tools Task; gets the user-task "
    "options given (see docs/task_plugins.md).",
)


@dataclass(frozen=True)
class UserTaskArgs:
    """The user-task options as given on the command line (``None``: not given)."""

    base_model: str | None = None
    data: Path | None = None
    label_prompts: str | None = None
    max_length: int = 128
    batch_size: int = 16
    limit: int | None = None
    task_plugin: str | None = None

    def given(self) -> bool:
        return any(
            v is not None
            for v in (self.base_model, self.data, self.label_prompts, self.limit, self.task_plugin)
        ) or (self.max_length, self.batch_size) != (128, 16)


def resolve_base_model(name: str, *, source: str = "") -> str:
    """A local directory for ``name``: itself if it is one, else its snapshot in the local
    Hugging Face cache (offline, never downloads); :class:`TaskError` otherwise."""
    if Path(name).is_dir():
        return str(Path(name).resolve())
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any hub error means "not available offline"
        where = f" (from {source})" if source else ""
        raise TaskError(
            f"base model {name!r}{where} is not a local directory and not in the local Hugging "
            f"Face cache (offline: nothing is downloaded); pass --base-model PATH "
            f"[{type(exc).__name__}]"
        ) from None


def _config_base_model(checkpoint: Path) -> str | None:
    cfg = checkpoint / "adapter_config.json" if checkpoint.is_dir() else None
    if cfg is None or not cfg.is_file():
        return None
    try:
        value = json.loads(cfg.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{cfg}: cannot read: {exc}") from exc
    return value if isinstance(value, str) and value else None


def head_checkpoint(checkpoints: Sequence[Path]) -> Path | None:
    """The checkpoint whose ``modules_to_save`` the task loads (the first that has any); raises
    :class:`TaskError` if another checkpoint carries different ones."""
    from coto_tools.adapters import open_checkpoint

    first: tuple[Path, dict[str, torch.Tensor]] | None = None
    for ckpt in checkpoints:
        extra = open_checkpoint(ckpt).extra_tensors()
        if not extra:
            continue
        if first is None:
            first = (ckpt, extra)
            continue
        same = set(extra) == set(first[1]) and all(
            torch.equal(extra[k], first[1][k]) for k in extra
        )
        if not same:
            raise TaskError(
                f"{first[0]} and {ckpt} carry different modules_to_save (e.g. their own trained "
                "classifier heads): one user task has one head; analyse them separately"
            )
    return None if first is None else first[0]


def user_task_spec(
    args: UserTaskArgs,
    checkpoints: Sequence[Path],
    *,
    task: str | None = None,
    head: Sequence[Path] | None = None,
) -> str | None:
    """The task spec (see :func:`coto_tools.tasks.task_spec`) for ``args``, or ``task`` when
    no user-task option was given. The base model defaults to the first checkpoint's; the head
    (``modules_to_save``) comes from ``head`` (default: ``checkpoints``)."""
    from coto_tools.tasks import task_spec

    if not args.given():
        return task
    if task is not None:
        raise OptionError("--task cannot be combined with --data/--base-model/--task-plugin")
    if args.task_plugin is not None:
        from coto_tools.tasks.plugin import normalise_spec

        opts = {k: v for k, v in _plain(args).items() if k != "task_plugin" and v is not None}
        if "base_model" in opts:
            opts["base_model"] = resolve_base_model(str(opts["base_model"]))
        return task_spec("plugin", {"spec": normalise_spec(args.task_plugin), "options": opts})
    if args.data is None:
        raise OptionError("--base-model/--label-prompts/--max-length/... need --data FILE")
    base = args.base_model
    source = ""
    if base is None:
        first = checkpoints[0] if checkpoints else None
        base = _config_base_model(first) if first is not None else None
        if base is None:
            raise OptionError(
                "no --base-model, and the checkpoint's adapter_config.json names no "
                "base_model_name_or_path"
            )
        source = f"{first}/adapter_config.json"
    head_ckpt = head_checkpoint(checkpoints if head is None else head)
    variant: dict[str, Any] = {
        "base_model": resolve_base_model(base, source=source),
        "data": str(Path(args.data).resolve()),
        "label_prompts": args.label_prompts,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "head_from": None if head_ckpt is None else str(head_ckpt.resolve()),
    }
    return task_spec("user", {k: v for k, v in variant.items() if v is not None})


def _plain(args: UserTaskArgs) -> dict[str, Any]:
    d = asdict(args)
    if d["data"] is not None:
        d["data"] = str(Path(d["data"]).resolve())
    if (d["max_length"], d["batch_size"]) == (128, 16):
        d["max_length"] = d["batch_size"] = None  # defaults: not given
    return d


def format_metrics(m: Metrics, *, perplexity: bool = False) -> str:
    ppl = f", perplexity {m.perplexity:.4g}" if perplexity else ""
    extra = "".join(f", {k} {v:.4f}" for k, v in m.extra)
    return f"accuracy {m.accuracy:.4f}{extra}, loss {m.loss:.4f}, logprob {m.logprob:.4f}{ppl}"
