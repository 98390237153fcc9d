"""``coto-tools report DIR [DIR ...]``: rebuild report.html / report.md / claims.json from
finished ``coto-tools reproduce`` directories (trains and evaluates nothing)."""

from __future__ import annotations

from pathlib import Path

import typer

from coto_tools.cli._app import app


@app.command("report")
def report_cmd(
    dirs: list[Path] = typer.Argument(..., help="Directories written by coto-tools reproduce."),
    out: Path | None = typer.Option(
        None, "--out", help="Where the page goes (default: the only DIR; required for several)."
    ),
) -> None:
    """Build the self-contained report page (claims table, figures, rerun commands)."""
    from coto_tools.reproduce import build_report

    path = build_report(dirs, out=out)
    typer.echo(f"{path}")
