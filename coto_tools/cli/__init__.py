"""Command line: ``coto-tools <command>``. One module per command; see ``_app.py``."""

from __future__ import annotations

from coto_tools.cli._app import app, load_commands, main

__all__ = ["app", "load_commands", "main"]
