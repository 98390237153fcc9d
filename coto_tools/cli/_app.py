"""The typer application and the one error boundary of the command line.

Each command lives in its own module in this package (``coto_tools/cli/<command>.py``) and
registers itself on :data:`app`; :func:`main` imports them all.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings
from collections.abc import Sequence

import typer

try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exc  # type: ignore[no-redef]

from coto_tools.errors import CotoError

app = typer.Typer(
    name="coto-tools",
    help="Analyse LoRA adapters: inspect, merge, Shapley, pruning, connectivity, CoTo training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Analyse LoRA adapters: inspect, merge, Shapley, pruning, connectivity, CoTo training."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(  # the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    print(f"coto-tools: warning: {_one_line(str(message))}", file=sys.stderr)


def load_commands() -> None:
    """Import every command module of this package (each registers itself on ``app``)."""
    import coto_tools.cli as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"coto_tools.cli.{info.name}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: a CotoError or a usage error is one line on stderr and exit code 2."""
    load_commands()
    warnings.showwarning = _show_warning
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="coto-tools", standalone_mode=False)
    except CotoError as exc:
        print(f"coto-tools: error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except click_exc.UsageError as exc:
        print(f"coto-tools: error: {_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("coto-tools: interrupted", file=sys.stderr)
        sys.exit(130)
    except click_exc.ClickException as exc:
        print(f"coto-tools: error: {_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(2)
