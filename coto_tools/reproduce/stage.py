"""Resumable stages: each writes ``DIR/<stage>/`` atomically, with ``done.json`` inside.

A stage works in ``DIR/.<stage>.partial/`` (kept across interruptions, so a Shapley evaluation
log there is resumed) and, when finished, writes ``done.json`` and renames the folder to
``DIR/<stage>/``. ``done.json`` records the stage's *key*: its settings and the SHA-256 of every
input adapter. A rerun with the same key skips the stage and reads its outputs; a different key
(other settings or retrained inputs) recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coto_tools import jsonio
from coto_tools.adapters.atomic import atomic_write_text
from coto_tools.errors import CheckpointError, CotoError
from coto_tools.threads import cpu_time_s

DONE_FILE = "done.json"
STAGE_FORMAT = "coto-tools/reproduce-stage"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_fingerprint(run_dir: Path) -> str:
    """SHA-256 of a run directory's adapter weights."""
    f = run_dir / "adapter_model.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{run_dir}: no adapter_model.safetensors")
    return file_sha256(f)


def say(message: str, *, progress: bool = True) -> None:
    """A stage line on stderr (shown with progress on)."""
    if progress:
        print(f"[reproduce] {message}", file=sys.stderr, flush=True)


def read_json(path: Path, **shape: Any) -> Any:
    """A JSON object file, checked (:func:`coto_tools.jsonio.read_json`; ``shape``: its
    ``required``/``optional`` keys): any problem is one error line naming the file."""
    return jsonio.read_json(path, **shape)


def write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n", force=True)


class Stage:
    """One stage of a reproduction in ``root / name`` (see the module docstring)."""

    def __init__(
        self, root: Path, name: str, key: Mapping[str, Any], *, in_place: bool = False
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.key = json.loads(json.dumps(dict(key), sort_keys=True))  # canonical JSON types
        self.dir = self.root / name
        # in place: the stage's outputs are each atomic themselves (training run directories)
        self.in_place = in_place
        self.work = self.dir if in_place else self.root / f".{name}.partial"
        self._t0 = self._c0 = 0.0

    def reused(
        self, *, force: bool, progress: bool, counters: dict[str, int]
    ) -> dict[str, Any] | None:
        """The finished record to reuse (said and counted as skipped), or ``None`` to run it."""
        rec = None if force else self.done()
        if rec is not None:
            say(f"{self.name}: finished earlier, skipped", progress=progress)
            counters["stages_skipped"] += 1
        return rec

    def done(self) -> dict[str, Any] | None:
        """The stage's ``done.json`` if it is finished with this key, else ``None``."""
        f = self.dir / DONE_FILE
        if not f.is_file():
            return None
        try:
            rec = read_json(f)
        except CotoError:
            return None
        if not isinstance(rec, dict) or rec.get("key") != self.key:
            return None
        return rec

    def start(self, *, fresh: bool = False) -> Path:
        """The work folder (created; emptied first when ``fresh``)."""
        if fresh and self.work.exists() and not self.in_place:
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        stale = self.work / DONE_FILE
        stale.unlink(missing_ok=True)
        self._t0, self._c0 = time.perf_counter(), cpu_time_s()
        return self.work

    def commit(self, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write ``done.json`` into the work folder and rename it to ``DIR/<stage>``."""
        rec = {
            "format": STAGE_FORMAT,
            "stage": self.name,
            "key": self.key,
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
            "cpu_time_s": round(cpu_time_s() - self._c0, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **dict(info or {}),
        }
        write_json(self.work / DONE_FILE, rec)
        if self.in_place:
            return rec
        old = self.root / f".{self.name}.old-{os.getpid()}"
        if self.dir.exists():
            os.rename(self.dir, old)
        os.rename(self.work, self.dir)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        return rec
