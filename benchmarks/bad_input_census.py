"""Census of the bad-input corpora (issue 16): every case of ``tests/test_malformed.py``,
``tests/test_reliability_cli.py`` and ``tests/test_reliability_corpus.py``, run as the console
script runs it, each in a forked child with a time limit, sorted into

- ``pass``: exit code 2, exactly one stderr line ``coto-tools: error: ...``, no traceback, and
  every byte of the inputs and of everything around them unchanged;
- ``traceback``: a traceback on stderr, or an exit code other than 0 and 2;
- ``hang``: still running after ``--timeout`` seconds (killed);
- ``input lost``: any file or folder around the inputs added, removed or changed;
- ``other``: anything else (e.g. accepted with exit 0, or several stderr lines);
- ``skipped``: cases the tests skip here too (unreadable files when running as root).

Unlike the tests (which assert), this counts, so one bad case does not hide the others.

Rerun:  python benchmarks/bad_input_census.py [--timeout 60] [--only corpus,cli,malformed]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_reliability_corpus import snapshot  # noqa: E402 - the corpus's own rule, from tests/


def run_case(argv: list[str], cwd: Path, around: Path, timeout: float) -> tuple[str, str]:
    """Run ``coto-tools ARGV`` in a forked child in ``cwd``; return (verdict, stderr)."""
    from coto_tools.cli import main

    before = snapshot(around)
    err_file = tempfile.NamedTemporaryFile(delete=False)
    err_file.close()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import torch

            torch.set_num_threads(1)
            os.chdir(cwd)
            sys.path.insert(0, str(cwd))
            sys.dont_write_bytecode = True
            fd = os.open(err_file.name, os.O_WRONLY)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            try:
                main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 -- counted as a traceback
                import traceback

                traceback.print_exc()
                code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        time.sleep(0.01)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "hang", ""
    err = Path(err_file.name).read_text(errors="replace")
    os.unlink(err_file.name)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    if "Traceback" in err or code not in (0, 2):
        return "traceback", err
    if snapshot(around) != before:
        return "input lost", err
    lines = err.splitlines()
    if code == 2 and len(lines) == 1 and lines[0].startswith("coto-tools: error: "):
        return "pass", err
    return "other", err


Job = tuple[str, Callable[[Path], tuple[list[str], Path] | None]]


def corpus_jobs() -> tuple[Callable[[Path], None], list[Job]]:
    import test_reliability_corpus as m

    return m.build_inputs, [(f"corpus:{c.id}", lambda root, c=c: (list(c.argv), root))
                            for c in m.CASES]  # fmt: skip


def cli_jobs() -> tuple[Callable[[Path], None], list[Job]]:
    import test_reliability_cli as m

    def job(c: m.Case) -> Job:
        def make(root: Path) -> tuple[list[str], Path] | None:
            if c.needs_option is not None and c.needs_option[1] not in m._options(c.argv[0]):
                return None
            return [a.replace("{r}", str(root)) for a in c.argv], root

        return f"cli:{c.id}", make

    return m.build_inputs, [job(c) for c in m.CASES]


def malformed_jobs() -> tuple[Callable[[Path], None], list[Job]]:
    import test_malformed as m

    def job(c: m.Case) -> Job:
        def make(root: Path) -> tuple[list[str], Path] | None:
            path = c.build(root)
            if c.id.startswith("unreadable") and os.access(path, os.R_OK | os.X_OK * path.is_dir()):
                return None  # chmod 000 is no obstacle to root: the tests skip these too
            return ["inspect", str(path), *c.args], root

        return f"malformed:{c.id}", make

    return (lambda root: None), [job(c) for c in m.CASES]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before 'hang'")
    ap.add_argument("--only", default="corpus,cli,malformed")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from coto_tools.cli._app import load_commands
    from coto_tools.tasks import get_task

    load_commands()
    get_task("tiny").build_model()  # imported and built once, before the children fork
    sources = {"corpus": corpus_jobs, "cli": cli_jobs, "malformed": malformed_jobs}
    counts: Counter[str] = Counter()
    bad: list[str] = []
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            build, jobs = sources[name]()
            template = Path(tmp) / f"{name}-template" / "in"
            template.mkdir(parents=True)
            build(template)
            for k, (case_id, make) in enumerate(jobs):
                case_dir = Path(tmp) / f"{name}-{k}"
                root = case_dir / "in"
                shutil.copytree(template, root, symlinks=True)
                link = root / "link_ck0"
                if link.is_symlink():  # the corpus' link points into its own copy
                    link.unlink()
                    link.symlink_to(root / "runs" / "ck0", target_is_directory=True)
                made = make(root)
                if made is None:
                    counts["skipped"] += 1
                else:
                    verdict, err = run_case(made[0], made[1], case_dir, args.timeout)
                    counts[verdict] += 1
                    if verdict != "pass":
                        bad.append(f"{verdict}: {case_id}: {err.strip()[:300]}")
                for dirpath, dirnames, filenames in os.walk(case_dir):  # undo chmod 000
                    for n in dirnames + filenames:
                        if not (Path(dirpath) / n).is_symlink():
                            os.chmod(Path(dirpath) / n, 0o700)
                shutil.rmtree(case_dir, ignore_errors=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    total = sum(counts.values()) - counts["skipped"]
    for line in bad:
        print(line)
    print(
        f"cases {total} (+{counts['skipped']} skipped), passes {counts['pass']}, tracebacks "
        f"{counts['traceback']}, hangs {counts['hang']}, inputs lost {counts['input lost']}, "
        f"other {counts['other']}; {wall:.0f} s wall, {cpu:.0f} s CPU in the children"
    )
    print("rerun: python benchmarks/bad_input_census.py")


if __name__ == "__main__":
    main()
