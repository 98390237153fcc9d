"""Append-only JSON-lines log of evaluated coalitions, for resuming an interrupted estimation.

File format (``evaluations.jsonl``), one JSON object per line:

* line 1, the header: ``{"format": "coto-tools/shapley-evaluations", "version": 1,
  "fingerprint": "<caller's game id>", "n_players": n}``;
* every further line, one evaluated coalition as soon as its value is known:
  ``{"coalition": "0101...", "values": {"logprob": -0.3, "accuracy": 0.8}}``, where character
  ``i`` of ``coalition`` is player ``i`` (``"1"`` = present).

Each line is flushed when written, so a run killed with ``kill -9`` loses at most the line being
written. On reopening, a truncated last line (no newline, or not valid JSON) is dropped and cut
off the file before anything is appended; a damaged line anywhere else is an error. A logged
value that is not finite (``NaN``, ``Infinity``, or ``null``, which is how such a value is
written: the file is strict JSON) is not reused: that coalition is evaluated again. A log whose
fingerprint or player count differs from the caller's is refused with :class:`ShapleyError`, so
values of one game are never reused for another.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from coto_tools.errors import ShapleyError
from coto_tools.shapley._bits import key_to_string, string_to_key

LOG_FORMAT = "coto-tools/shapley-evaluations"
LOG_VERSION = 1


class EvaluationLog:
    """Open (or create) ``path`` for the game identified by ``fingerprint``.

    ``entries`` maps coalition keys (bitmasks) to their metric dicts, in file order; the
    :class:`~coto_tools.shapley.cache.CachedGame` that owns the log loads them into its cache and
    calls :meth:`append` for every newly evaluated coalition.
    """

    def __init__(self, path: str | Path, fingerprint: str, n_players: int) -> None:
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ShapleyError(f"log fingerprint must be a non-empty string, got {fingerprint!r}")
        if n_players < 1:
            raise ShapleyError(f"n_players must be >= 1, got {n_players}")
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.n_players = n_players
        self.entries: dict[int, dict[str, float]] = {}
        self.dropped_partial_line = False
        self.non_finite_dropped = 0
        self._fh: IO[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read_existing()
        else:
            self._create()

    # -- reading -----------------------------------------------------------------------------
    def _read_existing(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        # A file always ends with "\n" after a complete line; the last piece is a partial line.
        complete, tail = lines[:-1], lines[-1]
        good_end = 0
        parsed: list[dict[str, Any]] = []
        for number, line in enumerate(complete, start=1):
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                if number == len(complete) and not tail:
                    # killed while writing a line whose newline did get out: treat as partial
                    tail = line
                    break
                raise ShapleyError(
                    f"{self.path}: line {number} is not valid JSON ({exc}); only a truncated "
                    "last line is tolerated"
                ) from exc
            if not isinstance(obj, dict):
                raise ShapleyError(f"{self.path}: line {number} is not a JSON object")
            parsed.append(obj)
            good_end += len(line) + 1
        if not parsed:
            # not even a complete header: nothing was logged, start over
            self._create()
            return
        self._check_header(parsed[0])
        for number, obj in enumerate(parsed[1:], start=2):
            key, values = self._parse_entry(obj, number)
            if all(math.isfinite(v) for v in values.values()):
                self.entries.setdefault(key, values)
            else:  # NaN/inf (or null) logged: not reused, the coalition is evaluated again
                self.non_finite_dropped += 1
        if tail:
            self.dropped_partial_line = True
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
        self._fh = self.path.open("a", encoding="utf-8")

    def _check_header(self, header: Mapping[str, Any]) -> None:
        if header.get("format") != LOG_FORMAT:
            raise ShapleyError(
                f"{self.path}: not a coto-tools evaluation log (header format "
                f"{header.get('format')!r}, expected {LOG_FORMAT!r})"
            )
        if header.get("version") != LOG_VERSION:
            raise ShapleyError(
                f"{self.path}: log version {header.get('version')!r} unsupported "
                f"(expected {LOG_VERSION})"
            )
        if header.get("fingerprint") != self.fingerprint:
            raise ShapleyError(
                f"{self.path}: log was written for game {header.get('fingerprint')!r}, not "
                f"{self.fingerprint!r} (the adapter, its config, the task, its data or the split "
                "changed); refusing to resume: pass --force to discard the log, or write to "
                "another --out"
            )
        if header.get("n_players") != self.n_players:
            raise ShapleyError(
                f"{self.path}: log has {header.get('n_players')!r} players, the game has "
                f"{self.n_players}; refusing to resume"
            )

    def _parse_entry(self, obj: Mapping[str, Any], number: int) -> tuple[int, dict[str, float]]:
        coalition = obj.get("coalition")
        values = obj.get("values")
        if isinstance(coalition, str):
            key = string_to_key(coalition, self.n_players)
        elif isinstance(coalition, int) and 0 <= coalition < (1 << self.n_players):
            key = coalition
        else:
            raise ShapleyError(f"{self.path}: line {number}: bad coalition {coalition!r}")
        if not isinstance(values, dict) or not values:
            raise ShapleyError(f"{self.path}: line {number}: 'values' must be a non-empty object")
        try:
            return key, {str(k): math.nan if v is None else float(v) for k, v in values.items()}
        except (TypeError, ValueError, OverflowError) as exc:
            raise ShapleyError(f"{self.path}: line {number}: non-numeric value ({exc})") from exc

    # -- writing -----------------------------------------------------------------------------
    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": LOG_FORMAT,
            "version": LOG_VERSION,
            "fingerprint": self.fingerprint,
            "n_players": self.n_players,
        }
        self._fh = self.path.open("w", encoding="utf-8")
        self._fh.write(json.dumps(header) + "\n")
        self._fh.flush()

    def append(self, key: int, values: Mapping[str, float]) -> None:
        """Write one evaluated coalition and flush it to the file."""
        if self._fh is None:
            raise ShapleyError(f"{self.path}: log is closed")
        clean = {str(k): float(v) for k, v in values.items()}
        strict = {k: (v if math.isfinite(v) else None) for k, v in clean.items()}  # JSON null
        line = json.dumps(
            {"coalition": key_to_string(key, self.n_players), "values": strict}, allow_nan=False
        )
        self._fh.write(line + "\n")
        self._fh.flush()
        self.entries.setdefault(key, clean)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> EvaluationLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.entries)
