"""``coto-tools inspect PATH``: one row per adapter module."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from coto_tools.adapters.inspect import inspect_checkpoint, render_table
from coto_tools.cli._app import THREADS, app, apply_threads


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(
        ..., help="PEFT adapter directory, adapter_model.safetensors, or a bare .safetensors"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    alpha: float | None = typer.Option(
        None, "--alpha", help="LoRA alpha for a bare file without metadata."
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Load a .bin checkpoint (torch.load weights_only=True)."
    ),
    threads: int = THREADS,
) -> None:
    """Show every module of an adapter: tower, layer, kind, shape, rank, alpha, scaling, norm."""
    apply_threads(threads)
    report = inspect_checkpoint(path, alpha=alpha, allow_pickle=allow_pickle)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(render_table(report))
