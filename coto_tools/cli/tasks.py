"""``coto-tools tasks``: the built-in tasks with their sizes, labels and zero-shot accuracy."""

from __future__ import annotations

import json

import typer

from coto_tools.cli._app import app


@app.command("tasks")
def tasks_cmd(
    names: list[str] = typer.Argument(None, help="Tasks to show (default: all)."),
    zero_shot: bool = typer.Option(
        False, "--zero-shot", help="Compute missing zero-shot accuracies (eval split, no adapter)."
    ),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Task option KEY=VALUE, repeatable (e.g. -o prompts=letters)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List tasks: train/eval/quick sizes, labels, zero-shot accuracy (cached; see --zero-shot),
    and the measured default preset (zero-shot and trained accuracy)."""
    from coto_tools.tasks.catalog import describe_tasks, parse_options, render, render_presets

    infos = describe_tasks(names or None, variant=parse_options(option), zero_shot=zero_shot)
    if as_json:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=2))
    else:
        typer.echo(render(infos))
        presets = render_presets(infos)
        if presets:
            typer.echo("\n" + presets)
