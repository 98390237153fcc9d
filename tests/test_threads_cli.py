"""Threads on a busy machine, ``--threads`` on every command, and one-line enum typo errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from coto_tools.cli import main
from coto_tools.cli._app import app, did_you_mean, load_commands
from coto_tools.errors import OptionError
from coto_tools.threads import auto_threads, busy_cpus, passive_waiting, set_threads


@pytest.mark.parametrize(
    ("cpus", "busy", "want"),
    [(2, 0.0, 2), (2, 0.3, 2), (2, 0.9, 1), (2, 1.0, 1), (2, 2.0, 1), (2, 7.5, 1), (16, 3.2, 13)],
)
def test_auto_threads_counts_free_cores(cpus: int, busy: float, want: int) -> None:
    assert auto_threads(cpus=cpus, busy=busy) == want


def test_busy_cpus_is_a_core_count() -> None:
    import os

    b = busy_cpus(0.05)
    assert 0.0 <= b <= max(os.cpu_count() or 1, b)  # load average may exceed the core count


def test_passive_waiting_respects_the_user() -> None:
    env: dict[str, str] = {}
    assert passive_waiting(env) is True and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert passive_waiting(env) is False and env["OMP_WAIT_POLICY"] == "ACTIVE"


def test_cli_import_leaves_torch_unloaded() -> None:
    """The wait policy is read when torch loads its OpenMP runtime: the CLI must set it before
    importing torch, so importing the CLI package must not import torch."""
    code = "import sys, coto_tools.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_set_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("COTO_TOOLS_THREADS", raising=False)
        n = set_threads(0)
        assert n >= 1 and torch.get_num_threads() == n
        monkeypatch.setenv("COTO_TOOLS_THREADS", "3")
        assert set_threads(0) == 3 and set_threads(2) == 2  # the option wins over the variable
        monkeypatch.setenv("COTO_TOOLS_THREADS", "many")
        with pytest.raises(OptionError, match="COTO_TOOLS_THREADS"):
            set_threads(0)
        with pytest.raises(OptionError, match="--threads"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_every_command_takes_threads() -> None:
    load_commands()
    import typer.main

    group = typer.main.get_command(app)
    missing = [
        name
        for name, cmd in group.commands.items()  # type: ignore[attr-defined]
        if name != "report" and "--threads" not in {o for p in cmd.params for o in p.opts}
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        ("merge a b --method tie", "did you mean 'ties'?"),
        ("shapley x --players layers", "did you mean 'layer'?"),
        ("train --task tiny --out x --method CoTo", "did you mean 'coto'?"),
    ],
)
def test_enum_typo_is_one_line_with_a_suggestion(
    argv: str, want: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv.split())
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(want), err
    assert "Value error" not in err and "Invalid value" not in err


def test_did_you_mean_none_when_nothing_is_close() -> None:
    assert did_you_mean("zzz", ["ties", "cat"]) is None
    assert did_you_mean("TIES", ["ties", "cat"]) == "ties"
