"""Atomic outputs under SIGKILL: ``merge``, ``train`` and ``prune --write-pruned``.

Each command runs in a child process (forked from this one, so the child skips the interpreter
and torch start-up; it then runs the command line :func:`coto_tools.cli.main` exactly as the
console script does) and is killed with SIGKILL after a random, seeded delay. The child's
safetensors writer is slowed down (the same bytes, written in 20 chunks with pauses) so that
kills land inside the final write too: half of the kills are timed from the moment the child
starts writing. After every kill the output path must either not exist or hold the complete
output (loadable, equal to the output of an uninterrupted run); the only other thing a kill may
leave is a temporary sibling ``.NAME.tmp-*``, which the next run to the same path removes.

(``shapley`` resuming after SIGKILL without re-evaluating anything is tested in
``tests/test_shapley_adapter.py::test_resume_after_sigkill``, with a real subprocess.)
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from coto_tools.adapters import load_adapter, save_adapter
from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.cli import main

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

WRITE_S = 0.4  # how long the slowed-down writer takes for one safetensors file
CHUNKS = 20
CHILD_TIMEOUT_S = 120


def _slow_writes(started: int) -> None:
    """In the child: safetensors' ``save_file`` writes the same bytes slowly, and reports (one
    byte on the ``started`` pipe) when a write begins."""
    import safetensors.torch as st

    def save_file(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
        data = st.save(tensors, metadata=metadata)
        os.write(started, b"w")
        step = max(1, len(data) // CHUNKS)
        with open(filename, "wb") as f:
            for i in range(0, len(data), step):
                f.write(data[i : i + step])
                f.flush()
                time.sleep(WRITE_S / CHUNKS)

    st.save_file = save_file


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """Import (and build the tiny model) once here, so that no forked child pays for it."""
    import coto_tools.merge  # noqa: F401
    import coto_tools.prune.outputs  # noqa: F401
    import coto_tools.train.loop  # noqa: F401
    from coto_tools.cli._app import load_commands
    from coto_tools.tasks import get_task

    load_commands()
    get_task("tiny").build_model()


@dataclass
class Outcome:
    killed: bool  # False: the child finished before the kill
    exit_code: int | None
    seconds: float  # from the child's start of work to its end


def run_child(argv: list[str], *, delay: float | None, from_write: bool = False) -> Outcome:
    """Fork, run ``coto-tools ARGV`` in the child with slow writes; SIGKILL it ``delay`` seconds
    after it starts working (or after its first write begins, with ``from_write``)."""
    ready_r, ready_w = os.pipe()
    write_r, write_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(ready_r)
            os.close(write_r)
            torch.set_num_threads(1)  # no OpenMP pool in a forked child
            _slow_writes(write_w)
            os.write(ready_w, b"r")
            try:
                main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(write_w)
    try:
        assert os.read(ready_r, 1) == b"r"
        t0 = time.monotonic()
        if delay is not None:
            if from_write:
                os.read(write_r, 1)  # b"" if the child ended without writing
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)  # a finished child is a zombie: the kill is a no-op
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"coto-tools {' '.join(argv)} did not finish in {CHILD_TIMEOUT_S} s")
            time.sleep(0.01)
    finally:
        os.close(ready_r)
        os.close(write_r)
    seconds = time.monotonic() - t0
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return Outcome(True, None, seconds)
    return Outcome(False, os.WEXITSTATUS(status), seconds)


def temp_siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-"))


def _same_adapter(a: LoraAdapter, b: LoraAdapter) -> None:
    assert a.names == b.names
    for n in a.names:
        assert torch.equal(a.modules[n].A, b.modules[n].A)
        assert torch.equal(a.modules[n].B, b.modules[n].B)
        assert a.modules[n].alpha == b.modules[n].alpha


def kill_campaign(
    tmp: Path,
    argv: Callable[[Path], list[str]],
    out_name: str,
    check_complete: Callable[[Path, Path], None],
    *,
    seed: int,
    kills: int = 4,
) -> dict[str, int]:
    """One uninterrupted run (the reference), then ``kills`` killed runs into fresh folders at
    seeded random moments, then a rerun into the last killed folder. Returns counts."""
    ref = tmp / "ref" / out_name
    ref.parent.mkdir()
    done = run_child(argv(ref), delay=None)
    assert done.exit_code == 0 and ref.exists() and not temp_siblings(ref)
    rng = random.Random(seed)
    counts = {"killed": 0, "killed_mid_write": 0, "no_output": 0, "complete": 0, "temp_left": 0}
    out = ref
    for k in range(kills):
        out = tmp / f"kill{k}" / out_name
        out.parent.mkdir()
        from_write = k % 2 == 1
        # from the start of work: anywhere in the run (or past its end: then the child completes);
        # from the start of the first write: inside the (slowed) write
        delay = rng.uniform(0, done.seconds * 1.5) if not from_write else rng.uniform(0, WRITE_S)
        outcome = run_child(argv(out), delay=delay, from_write=from_write)
        if outcome.killed:
            counts["killed"] += 1
        else:
            assert outcome.exit_code == 0
        left = temp_siblings(out)
        counts["temp_left"] += bool(left)
        if left:
            counts["killed_mid_write"] += 1
            assert outcome.killed
        others = {p.name for p in out.parent.iterdir()} - set(left) - {out.name}
        assert not others, f"unexpected files after the kill: {others}"
        if out.exists():
            counts["complete"] += 1
            check_complete(out, ref)
        else:
            counts["no_output"] += 1
            assert outcome.killed
    # the next run to the same path succeeds and removes the dead run's temporary sibling
    if out.exists():
        out_argv = [*argv(out), "--force"]
    else:
        out_argv = argv(out)
    rerun = run_child(out_argv, delay=None)
    assert rerun.exit_code == 0
    check_complete(out, ref)
    assert temp_siblings(out) == []
    assert counts["killed_mid_write"] >= 1, counts  # at least one kill landed inside a write
    return counts


def _adapter(seed: int, n_modules: int, dim: int, rank: int) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    return LoraAdapter(
        {
            f"model.layers.{i}.self_attn.q_proj": LoraModule(
                torch.randn(rank, dim, generator=g), torch.randn(dim, rank, generator=g), alpha=16.0
            )
            for i in range(n_modules)
        }
    )


def test_merge_killed_leaves_no_partial_output(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_adapter(_adapter(1, 16, 256, 8), a)  # 16 modules of 256 x 256, rank 8 (2 MB out)
    save_adapter(_adapter(2, 16, 256, 8), b)

    def argv(out: Path) -> list[str]:
        return ["merge", str(a), str(b), "--method", "cat", "--weights", "0.7,-0.2",
                "--out", str(out)]  # fmt: skip

    def complete(out: Path, ref: Path) -> None:
        _same_adapter(load_adapter(out), load_adapter(ref))
        rec = json.loads((out / "coto_provenance.json").read_text())  # written with the rest
        assert rec["method"] == "cat" and rec["weights"] == [0.7, -0.2]

    counts = kill_campaign(tmp_path, argv, "merged", complete, seed=8)
    print("merge", counts, file=sys.stderr)


def test_train_killed_leaves_no_partial_run(tmp_path: Path) -> None:
    def argv(out: Path) -> list[str]:
        return ["train", "--task", "tiny", "--steps", "3", "--batch-size", "8", "--rank", "2",
                "--quiet", "--out", str(out)]  # fmt: skip

    def complete(out: Path, ref: Path) -> None:
        from coto_tools.train.run import read_record

        _same_adapter(load_adapter(out), load_adapter(ref))
        assert read_record(out)["task"] == "tiny"
        assert (out / "train_log.csv").read_text().count("\n") >= 3

    counts = kill_campaign(tmp_path, argv, "run", complete, seed=9)
    print("train", counts, file=sys.stderr)


def test_write_pruned_killed_leaves_no_partial_output(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.safetensors"
    save_adapter(_adapter(3, 12, 256, 8), ckpt)

    def argv(out: Path) -> list[str]:
        return ["prune", str(ckpt), "--write-pruned", "everyother", "--out", str(out)]

    def complete(out: Path, ref: Path) -> None:
        got, want = load_adapter(out), load_adapter(ref)
        _same_adapter(got, want)
        assert len(got.names) == 6

    counts = kill_campaign(tmp_path, argv, "pruned", complete, seed=10)
    print("prune --write-pruned", counts, file=sys.stderr)


def test_stale_temp_siblings_of_dead_runs_are_removed(tmp_path: Path) -> None:
    from coto_tools.adapters.atomic import atomic_write_text, remove_stale_temps

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # ``pid`` is now a process that no longer exists
    out = tmp_path / "out.txt"
    dead_file = tmp_path / f".out.txt.tmp-{pid}-abc"
    dead_dir = tmp_path / f".out.txt.tmp-{pid}-def"
    live = tmp_path / f".out.txt.tmp-{os.getppid()}-ghi"  # our parent is alive
    legacy = tmp_path / ".out.txt.tmp-xyz"  # no pid in the name: unknown owner, kept
    other = tmp_path / f".other.txt.tmp-{pid}-abc"  # another output's temp: not ours to touch
    dead_file.write_text("partial")
    dead_dir.mkdir()
    (dead_dir / "adapter_model.safetensors").write_bytes(b"partial")
    for p in (live, legacy, other):
        p.write_text("x")
    atomic_write_text(out, "done")
    assert out.read_text() == "done"
    assert not dead_file.exists() and not dead_dir.exists()
    assert live.exists() and legacy.exists() and other.exists()
    assert remove_stale_temps(out) == []
