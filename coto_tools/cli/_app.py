"""The typer application and the one error boundary of the command line.

Each command lives in its own module in this package (``coto_tools/cli/<command>.py``) and
registers itself on :data:`app`; :func:`main` imports them all.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
import re
import sys
import warnings
from collections.abc import Sequence

import typer

try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exc  # type: ignore[no-redef]

from coto_tools.errors import CotoError
from coto_tools.threads import passive_waiting, set_threads

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


# -- torch CPU threads: one option for every command (issue 19) --
THREADS = typer.Option(
    0,
    "--threads",
    help="torch CPU threads (0: as many as there are free cores now, at least 1; OpenMP "
    "threads wait passively, so a busy machine does not slow them down many times).",
)


def quiet_loading(quiet: bool) -> None:
    """Under ``--quiet``: no transformers/huggingface_hub progress bars (e.g. "Loading
    weights") and no ``coto_tools`` INFO lines (the memory estimate) for this command."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        _QUIETED["bars"] = True
        logging.getLogger("coto_tools").setLevel(logging.WARNING)


_QUIETED = {"bars": False}  # what quiet_loading switched off, switched on again by main()


class _InfoHandler(logging.StreamHandler):
    """``coto-tools: <message>`` on the stderr of the moment (one per process)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"coto-tools: {_one_line(record.getMessage())}", file=sys.stderr)


def _show_info() -> None:
    """INFO lines of the library's ``coto_tools`` logger (e.g. the evaluator's memory estimate)
    go to stderr, one line each; ``--quiet`` raises the level again (:func:`quiet_loading`)."""
    logger = logging.getLogger("coto_tools")
    if not any(isinstance(h, _InfoHandler) for h in logger.handlers):
        logger.addHandler(_InfoHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if _QUIETED["bars"]:  # a previous --quiet command in this process
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()
        _QUIETED["bars"] = False


def apply_threads(threads: int) -> int:
    """Set torch's CPU threads for this command (``0``: automatic); see
    :mod:`coto_tools.threads`."""
    return set_threads(threads)


_CHOICE = re.compile(r"'(?P<value>[^']*)' is not one of (?P<choices>.+?)\.?$")
_PARAM = re.compile(r"Invalid value for (?P<param>'[^']+'|\S+):")


def did_you_mean(value: str, choices: Sequence[str]) -> str | None:
    """The closest of ``choices`` to a mistyped ``value`` (case ignored), or ``None``."""
    by_lower = {c.lower(): c for c in choices}
    if value.lower() in by_lower:
        return by_lower[value.lower()]
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def usage_message(exc: click_exc.UsageError) -> str:
    """One line for a usage error; a bad choice becomes "--method: 'tie' is not one of ...;
    did you mean 'ties'?" without the validation library's wording."""
    text = _one_line(exc.format_message())
    m = _CHOICE.search(text)
    if m is None:
        return text
    choices = re.findall(r"'([^']*)'", m.group("choices"))
    where = _PARAM.search(text)
    param = where.group("param").strip("'") if where else "value"
    hint = did_you_mean(m.group("value"), choices)
    msg = f"{param}: {m.group('value')!r} is not one of {', '.join(choices)}"
    return msg + (f"; did you mean {hint!r}?" if hint else "")


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
    passive_waiting()  # before torch is imported: its OpenMP runtime reads it once, at load
    load_commands()
    warnings.showwarning = _show_warning
    _show_info()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="coto-tools", standalone_mode=False)
    except CotoError as exc:
        print(f"coto-tools: error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except click_exc.UsageError as exc:
        print(f"coto-tools: error: {usage_message(exc)}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("coto-tools: interrupted", file=sys.stderr)
        sys.exit(130)
    except click_exc.ClickException as exc:
        print(f"coto-tools: error: {_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(2)
