"""``coto-tools tasks``: the built-in tasks with their sizes, labels and zero-shot accuracy."""

from __future__ import annotations

import json

import typer

from coto_tools.cli._app import THREADS, app, apply_threads, quiet_loading


@app.command("tasks")
def tasks_cmd(
    names: list[str] = typer.Argument(None, help="Tasks to show (default: all)."),
    zero_shot: bool = typer.Option(
        True,
        "--zero-shot/--no-zero-shot",
        help="Measure zero-shot accuracies not yet cached (eval split, no adapter; a few seconds "
        "per task, once: they are kept in the cache). --no-zero-shot: show cached ones only.",
    ),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Task option KEY=VALUE, repeatable (e.g. -o prompts=letters)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    threads: int = THREADS,
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        help="Base model dtype for the zero-shot accuracy: auto (float32: measured on the CPU), "
        "float32, bfloat16 or float16; each dtype is cached on its own.",
    ),
) -> None:
    """List tasks: train/eval/quick sizes, labels, zero-shot accuracy (measured once, then
    cached), and the measured default preset (zero-shot and trained accuracy)."""
    from coto_tools.tasks.catalog import describe_tasks, parse_options, render, render_presets

    if zero_shot:
        apply_threads(threads)
        quiet_loading(True)  # no "Loading weights" bars between the table's lines
    infos = describe_tasks(
        names or None, variant=parse_options(option), zero_shot=zero_shot, dtype=dtype
    )
    if as_json:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=2))
    else:
        typer.echo(render(infos))
        presets = render_presets(infos)
        if presets:
            typer.echo("\n" + presets)
