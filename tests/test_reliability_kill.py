"""Atomic outputs under SIGKILL: ``merge``, ``train`` and ``prune --write-pruned``.

Each command runs in a child process (forked from this one, so the child skips the interpreter
and torch start-up; it then runs the command line :func:`coto_tools.cli.main` exactly as the
console script does) and is killed with SIGKILL after a random, seeded delay. The child's
safetensors writer is slowed down (the same bytes, written in 20 chunks with pauses) so that
kills land inside the final write too: half of the kills are timed from the moment the child
starts writing. After every kill the output path must either not exist or hold the complete
output (loadable, equal to the output of an uninterrupted run); the only other thing a kill may
leave is a temporary sibling ``.NAME.tmp-*``, which the next run to the same path removes.

Issue 16 adds: a ``--force`` replacement killed at moments spread over its write and its two
renames (the output is always the complete old or new adapter; an old one moved aside comes
back), two concurrent writers of one output (one complete output, a clean exit for each), and
``shapley`` killed at random moments then rerun (the same numbers as an uninterrupted run).
(``shapley`` resuming after SIGKILL without re-evaluating anything is also tested in
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
from typing import NoReturn

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


def _child_main(argv: list[str], setup: Callable[[], None]) -> NoReturn:
    """In a forked child: ``setup()``, then ``coto-tools ARGV``; the process ends with its exit
    code (1 if anything raised), never returning into pytest."""
    code = 1
    try:
        torch.set_num_threads(1)  # no OpenMP pool in a forked child
        setup()
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def run_child(argv: list[str], *, delay: float | None, from_write: bool = False) -> Outcome:
    """Fork, run ``coto-tools ARGV`` in the child with slow writes; SIGKILL it ``delay`` seconds
    after it starts working (or after its first write begins, with ``from_write``)."""
    ready_r, ready_w = os.pipe()
    write_r, write_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest

        def setup() -> None:
            os.close(ready_r)
            os.close(write_r)
            _slow_writes(write_w)
            os.write(ready_w, b"r")

        _child_main(argv, setup)
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


# -- issue 16: --force replacement killed, two concurrent writers, Shapley resume ---------------


def _slow_old_renames() -> None:
    """In the child: moving the old output aside (``.NAME.old-*``) pauses before returning, so
    that kills land between the two renames of a ``--force`` replacement too."""
    real = os.rename

    def rename(src, dst, *a, **kw):  # type: ignore[no-untyped-def]
        real(src, dst, *a, **kw)
        if ".old-" in os.fspath(dst):
            time.sleep(0.3)

    os.rename = rename  # type: ignore[assignment]


def _same_delta(a: LoraAdapter, b: LoraAdapter) -> bool:
    n = a.names[0]
    return torch.equal(a.modules[n].delta(), b.modules[n].delta())


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_force_replacement_killed_keeps_old_or_new_output(tmp_path: Path) -> None:
    """``merge --force`` over an earlier merge, killed at random moments (in the slowed write,
    between the two renames, or not at all): the output is always the complete old or new
    adapter; after a kill between the renames the old one waits aside and the next write (or
    run) of the path puts it back. Nothing else is ever left."""
    from coto_tools.adapters.atomic import remove_stale_temps

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_adapter(_adapter(1, 16, 256, 8), a)
    save_adapter(_adapter(2, 16, 256, 8), b)

    def argv(out: Path, weights: str) -> list[str]:
        return ["merge", str(a), str(b), "--method", "cat", "--weights", weights, "--out", str(out)]

    refs = {}
    for w in ("0.5,0.5", "0.7,-0.2"):
        refs[w] = tmp_path / f"ref-{w}"
        assert run_child(argv(refs[w], w), delay=None).exit_code == 0
    old_ref, new_ref = (load_adapter(refs[w]) for w in ("0.5,0.5", "0.7,-0.2"))
    rng = random.Random(16)
    seen = {"old": 0, "new": 0, "moved_aside": 0, "killed": 0}
    kills = 8  # from the first write: spread over the write, the renames and past the end
    for k in range(kills):
        out = tmp_path / f"case{k}" / "merged"
        out.parent.mkdir()
        assert run_child(argv(out, "0.5,0.5"), delay=None).exit_code == 0
        delay = (k + rng.random()) / kills * (WRITE_S + 0.8)
        pid_out = _run_forced(argv(out, "0.7,-0.2") + ["--force"], delay, True)
        seen["killed"] += pid_out.killed
        left = _siblings(out)
        assert all(".tmp-" in n or ".old-" in n for n in left), left
        if not out.exists():  # killed between the renames: the old output waits aside
            assert pid_out.killed and any(".old-" in n for n in left), left
            seen["moved_aside"] += 1
        remove_stale_temps(out)  # what the next run of the same path does first
        assert _siblings(out) == [] and out.exists()
        got = load_adapter(out)
        is_new = _same_delta(got, new_ref)
        _same_adapter(got, new_ref if is_new else old_ref)
        seen["new" if is_new else "old"] += 1
    print("force replacement", seen, file=sys.stderr)
    assert seen["killed"] >= 2 and seen["old"] >= 1


def _run_forced(argv: list[str], delay: float, from_write: bool) -> Outcome:
    global _slow_writes
    plain = _slow_writes

    def slow(started: int) -> None:
        plain(started)
        _slow_old_renames()

    _slow_writes = slow  # type: ignore[assignment]
    try:
        return run_child(argv, delay=delay, from_write=from_write)
    finally:
        _slow_writes = plain


def _start(argv: list[str]) -> int:
    pid = os.fork()
    if pid == 0:

        def setup() -> None:
            _slow_writes(os.open(os.devnull, os.O_WRONLY))
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)

        _child_main(argv, setup)
    return pid


def _wait(pid: int) -> int:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("a concurrent writer did not finish")


def test_two_concurrent_writers_end_in_one_complete_output(tmp_path: Path) -> None:
    """Two ``merge`` runs into one folder at once (slowed writes overlap): with ``--force`` both
    exit 0 and the folder holds one of their complete outputs; without it (a new folder) one
    writes and the other exits 2. No temporary or old sibling is left either way."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_adapter(_adapter(1, 16, 256, 8), a)
    save_adapter(_adapter(2, 16, 256, 8), b)

    def argv(out: Path, weights: str) -> list[str]:
        return ["merge", str(a), str(b), "--method", "cat", "--weights", weights, "--out", str(out)]

    refs = {w: tmp_path / f"ref-{w}" for w in ("0.5,0.5", "0.7,-0.2")}
    for w, ref in refs.items():
        assert run_child(argv(ref, w), delay=None).exit_code == 0
    wins = []
    for k in range(3):
        out = tmp_path / f"force{k}" / "merged"
        out.parent.mkdir()
        assert run_child(argv(out, "0.5,0.5"), delay=None).exit_code == 0
        pids = [_start(argv(out, w) + ["--force"]) for w in refs]
        assert [_wait(p) for p in pids] == [0, 0]
        assert _siblings(out) == []
        got = load_adapter(out)
        match = [w for w, ref in refs.items() if _same_delta(got, load_adapter(ref))]
        assert len(match) == 1
        _same_adapter(got, load_adapter(refs[match[0]]))
        wins.append(match[0])
        out = tmp_path / f"new{k}" / "merged"
        out.parent.mkdir()
        pids = [_start(argv(out, w)) for w in refs]
        assert sorted(_wait(p) for p in pids) == [0, 2]
        assert _siblings(out) == [] and load_adapter(out).names
    print("concurrent --force winners", wins, file=sys.stderr)


def test_shapley_killed_at_random_moments_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    """``shapley`` killed with SIGKILL at random moments, then rerun: the numbers equal an
    uninterrupted run's, and the final run computes only what the killed runs did not log."""
    from coto_tools.train.run import RUN_FILE

    ckpt = tmp_path / "ck"
    rec = {"format": "coto-tools/train-run", "task": "tiny", "task_variant": {}, "method": "lora",
           "seed": 0, "config": {}}  # fmt: skip
    g = torch.Generator().manual_seed(5)
    names = [f"encoder.layer.{i}.attention.self.{k}" for i in (0, 1) for k in ("query", "value")]
    mods = {n: LoraModule(torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g),
                          alpha=8.0) for n in names}  # fmt: skip
    save_adapter(LoraAdapter(mods), ckpt, extra_files={RUN_FILE: json.dumps(rec)})

    def argv(out: Path) -> list[str]:
        return ["shapley", str(ckpt), "--estimator", "permutation", "--budget", "14", "--split",
                "quick", "--seed", "4", "--quiet", "--out", str(out)]  # fmt: skip

    ref = tmp_path / "ref"
    done = run_child(argv(ref), delay=None)
    assert done.exit_code == 0
    want = json.loads((ref / "shapley.json").read_text())
    out = tmp_path / "resumed"
    rng = random.Random(17)
    kills = 0
    for k in range(4):  # each kill later than the last: the log grows between them
        outcome = run_child(argv(out), delay=(k + rng.random()) / 4 * done.seconds)
        kills += outcome.killed
    final = run_child(argv(out), delay=None)
    assert final.exit_code == 0
    got = json.loads((out / "shapley.json").read_text())
    for m in ("logprob", "accuracy", "loss"):
        assert got["metrics"][m]["values"] == want["metrics"][m]["values"]
    assert got["evaluations"] == want["evaluations"]
    assert got["evaluations_computed"] + got["evaluations_from_log"] == got["evaluations"]
    print("shapley kills", kills, "final computed", got["evaluations_computed"], file=sys.stderr)
