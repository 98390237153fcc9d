"""How many torch CPU threads to use, on an idle machine or a busy one.

Two intra-op threads on cores that other jobs are using can be many times slower than one: each
parallel region ends at a barrier, and a thread that waits for a descheduled sibling either
spins (burning the very core the sibling needs) or sleeps until it is woken. Two measures keep
the default from collapsing under contention:

1. OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``): a waiting thread sleeps
   instead of spinning. The OpenMP runtime reads this once, when torch is first imported, so
   :func:`passive_waiting` must run before that (the command line does it first thing).
2. :func:`auto_threads` counts the cores that are actually free now (idle time in
   ``/proc/stat`` over a short window; the 1-minute load average where that file is missing)
   and uses that many threads, at least one.

``--threads N`` on every command overrides the choice; ``0`` means the environment variable
``COTO_TOOLS_THREADS`` when it is set (e.g. in CI or tests), else :func:`auto_threads`.
"""

from __future__ import annotations

import os
import time

from coto_tools.errors import OptionError

WAIT_POLICY = "OMP_WAIT_POLICY"
THREADS_ENV = "COTO_TOOLS_THREADS"


def passive_waiting(environ: dict[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy; ``True`` if it was set.

    Has an effect only before torch (its OpenMP runtime) is loaded in this process."""
    env = os.environ if environ is None else environ
    if WAIT_POLICY in env:
        return False
    env[WAIT_POLICY] = "PASSIVE"
    return True


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies summed over all CPUs from ``/proc/stat``; ``None`` if unreadable."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    vals = [float(x) for x in fields[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)  # idle + iowait
    return sum(vals) - idle, sum(vals)


def busy_cpus(window_s: float = 0.1) -> float:
    """How many CPUs other work keeps busy now: ``/proc/stat`` over ``window_s`` seconds
    (this process sleeps meanwhile, so the busy time is other processes'), else the 1-minute
    load average, else 0."""
    a = _cpu_times()
    if a is not None:
        time.sleep(window_s)
        b = _cpu_times()
        if b is not None and b[1] > a[1]:
            n = os.cpu_count() or 1
            return n * (b[0] - a[0]) / (b[1] - a[1])
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def auto_threads(*, cpus: int | None = None, busy: float | None = None) -> int:
    """Threads for this process: the usable CPUs not busy with other work, at least 1.

    ``cpus``/``busy`` default to :func:`usable_cpus` / :func:`busy_cpus` (given for tests). A
    core counts as taken once other work uses three quarters of it (``round(busy - 0.25)``),
    so a brief blip of another process does not halve the threads of an idle machine."""
    n = usable_cpus() if cpus is None else cpus
    load = busy_cpus() if busy is None else busy
    taken = max(0, round(load - 0.25))
    return max(1, min(n, n - taken))


def env_threads() -> int | None:
    """``COTO_TOOLS_THREADS`` as a positive int (``None`` if unset); :class:`OptionError` if
    it is set to anything else."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise OptionError(f"{THREADS_ENV}={raw!r}: expected a positive integer")
    return int(raw)


def set_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads: ``threads`` if > 0, else :func:`env_threads`, else
    :func:`auto_threads`. Returns the number set. Call it before heavy work (torch starts its
    pool on first use)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise OptionError(f"--threads must be an integer >= 0 (0: automatic), got {threads!r}")
    import torch

    n = threads or env_threads() or auto_threads()
    torch.set_num_threads(n)
    return n


def cpu_time_s() -> float:
    """CPU seconds (user + system, all threads) this process has used so far."""
    return time.process_time()
