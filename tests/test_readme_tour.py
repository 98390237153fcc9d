"""The README's tour, run as written (on the ``tiny`` task), so it cannot drift from the tool.

The ``bash`` block under "## A tour" is read from README.md and each line runs in order in an
empty folder, through the console entry point in this process. The only changes: the built-in
``bbc-topic`` task becomes ``tiny`` (``tasks`` lists only it; ``reproduce`` gets ``--task
tiny``), and every command gets ``--threads 1`` (the test machine is shared). Every command must
exit 0, and the paths the tour's comments promise must exist.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from coto_tools.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_lines(text: str) -> list[list[str]]:
    """The commands of the README's tour: one argv (without ``coto-tools``) per line."""
    section = text.split("\n## A tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README: no bash block under '## A tour'"
    lines = []
    for raw in block.group(1).splitlines():
        argv = shlex.split(raw, comments=True)
        if argv:
            assert argv[0] == "coto-tools", raw
            lines.append(argv[1:])
    return lines


def on_tiny(argv: list[str]) -> list[str]:
    """The same command on the tiny task, with one thread."""
    argv = ["tiny" if a == "bbc-topic" else a for a in argv]
    if argv[0] == "tasks":
        argv = [*argv[:1], "tiny", *argv[1:]]
    if argv[0] == "reproduce" and "--task" not in argv:
        argv += ["--task", "tiny"]
    return [*argv, "--threads", "1"] if argv[0] != "report" else argv


def test_tour_lines_are_read() -> None:
    lines = tour_lines(README.read_text())
    commands = [a[0] for a in lines]
    assert commands[0] == "tasks" and commands[-1] == "report"
    for cmd in ("train", "inspect", "merge", "shapley", "prune", "lmc", "reproduce"):
        assert cmd in commands
    # every run a later command reads is made by an earlier command
    made: set[str] = set()
    for argv in lines:
        outs = {argv[i + 1] for i, a in enumerate(argv) if a == "--out"}
        if argv[0] in ("train", "reproduce"):
            made |= outs
        for a in argv[1:]:
            if a.startswith("runs/") and a not in outs:
                assert a in made, f"{shlex.join(argv)}: {a} is not made earlier in the tour"


def test_readme_tour_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COTO_TOOLS_CACHE", str(tmp_path / "cache"))
    for argv in map(on_tiny, tour_lines(README.read_text())):
        try:
            main(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                err = capsys.readouterr().err
                msg = f"coto-tools {shlex.join(argv)}: exit {exc.code}\n{err[-2000:]}"
                raise AssertionError(msg) from None
    runs = tmp_path / "runs"
    for p in (
        "coto-s0/adapter_model.safetensors",
        "coto-s1/adapter_model.safetensors",
        "merged/adapter_model.safetensors",
        "ties/adapter_model.safetensors",
        "coto-s0/shapley/shapley.csv",
        "shapley_compare/shapley_heatmaps.png",
        "coto-s0/prune/prune_report.md",
        "coto-s0-even/adapter_model.safetensors",
        "coto-s0/lmc/lmc.json",
        "quick/report.html",
    ):
        assert (runs / p).is_file(), p
    assert not (tmp_path / "shapley_compare").exists()  # beside the first checkpoint, not in cwd
    meta = json.loads((runs / "quick" / "reproduce.json").read_text())
    assert meta["cpu_time_s"] > 0 and meta["invocations"][-1]["cpu_time_s"] > 0
    assert "CPU time (s)" in (runs / "quick" / "report.html").read_text()
