"""``coto-tools reproduce --quick`` on an idle machine and beside one competing CPU-bound process.

Each lane runs the CLI in a fresh child process (fresh ``--out``), so its OpenMP runtime and
thread pool start as a user's would; wall time and CPU time (user + system of the child, from
``os.wait4``) are printed per lane. The competing process is a pure-Python busy loop (one core,
no threads), started before the lane and killed after it.

Lanes (``--lanes``, comma list; default ``auto,1``):

- ``auto``: the default (``--threads 0``): threads from the cores free now, passive OpenMP
  waiting;
- ``N`` (an integer): ``--threads N`` with passive waiting;
- ``spin-N``: ``--threads N`` with ``OMP_WAIT_POLICY=ACTIVE`` (threads spin while they wait:
  what the default used to do in effect).

Goal (issue 19): with one competing process, the default lane takes at most 2x its idle time.
The machine must otherwise be idle for the numbers to mean anything; the load average is
printed before each run.

Rerun (the main job, about 3 min per run on an idle 2-core machine):
    python benchmarks/bench_contention.py --task bbc-topic
Smoke test on the tiny task (seconds):
    python benchmarks/bench_contention.py --task tiny --lanes auto,spin-2
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY_LOOP = "while True: pass"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load avg {one:.2f} (5 min {five:.2f}) on {os.cpu_count()} cpus"


def lane_command(lane: str, task: str, out: Path) -> tuple[list[str], dict[str, str]]:
    """The CLI command line and environment of one lane."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("COTO_TOOLS_THREADS", None)  # the lanes choose the threads
    if lane == "auto":
        threads = "0"
    elif lane.startswith("spin-"):
        threads = lane.removeprefix("spin-")
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    else:
        threads = lane
    if not threads.isdigit():
        raise SystemExit(f"lane {lane!r}: expected auto, N or spin-N")
    cmd = [sys.executable, "-m", "coto_tools", "reproduce", "--quick", "--task", task,
           "--out", str(out), "--quiet", "--threads", threads]  # fmt: skip
    return cmd, env


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, CPU s of the child, exit status)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def run_lane(lane: str, task: str, competing: bool, tmp: Path) -> tuple[float, float]:
    out = tmp / f"{lane}-{'busy' if competing else 'idle'}"
    cmd, env = lane_command(lane, task, out)
    hog = None
    if competing:
        hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        time.sleep(1.0)  # let it show up in /proc/stat before the CLI counts free cores
    try:
        print(f"  [{_load()}] {shlex.join(cmd[1:])}{'  + 1 busy process' if hog else ''}")
        wall, cpu, rc = timed(cmd, env)
    finally:
        if hog is not None:
            hog.send_signal(signal.SIGKILL)
            hog.wait()
    if rc != 0:
        raise SystemExit(f"lane {lane} failed (exit {rc})")
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="bbc-topic")
    ap.add_argument("--lanes", default="auto,1")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    lanes = [x.strip() for x in args.lanes.split(",") if x.strip()]
    rows: list[tuple[str, float, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench_contention-") as d:
        tmp = Path(d)
        for lane in lanes:
            idle = [run_lane(lane, args.task, False, tmp / f"r{i}") for i in range(args.repeats)]
            busy = [run_lane(lane, args.task, True, tmp / f"r{i}") for i in range(args.repeats)]
            iw, ic = min(idle)
            bw, bc = min(busy)
            rows.append((lane, iw, ic, bw, bc))
    print(f"\nreproduce --quick --task {args.task} (best of {args.repeats}); {_load()}")
    print(f"{'lane':<8} {'idle wall':>10} {'idle cpu':>9} {'busy wall':>10} {'busy cpu':>9} "
          f"{'busy/idle':>9}")  # fmt: skip
    for lane, iw, ic, bw, bc in rows:
        print(f"{lane:<8} {iw:>9.1f}s {ic:>8.1f}s {bw:>9.1f}s {bc:>8.1f}s {bw / iw:>8.2f}x")
    print("goal: busy/idle <= 2x for the default (auto) lane")
    print(f"rerun: python benchmarks/bench_contention.py --task {args.task} --lanes {args.lanes}"
          f" --repeats {args.repeats}")  # fmt: skip


if __name__ == "__main__":
    main()
