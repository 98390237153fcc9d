"""Reading a user data file: its rows (JSONL or CSV/TSV with a header) and its format, chosen
by the columns (:func:`detect_format`); the tasks that score each format are in
:mod:`coto_tools.tasks.user` and :mod:`coto_tools.tasks.lm_data`."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from coto_tools.errors import TaskError


class DataFormat(str, Enum):
    """What a data file holds, chosen by its columns (:func:`detect_format`)."""

    text = "text"  # text[,label]
    prompt_completion = "prompt,completion"
    messages = "messages"
    multiple_choice = "question/context,choices,answer"


def detect_format(record: Mapping[str, Any]) -> DataFormat:
    """The format of a data file from the columns of its first row: ``prompt``+``completion``,
    ``messages``, ``choices``+``answer`` (with ``question`` and/or ``context``), else text."""
    cols = set(record)
    if {"prompt", "completion"} <= cols:
        return DataFormat.prompt_completion
    if "messages" in cols:
        return DataFormat.messages
    if {"choices", "answer"} <= cols and cols & {"question", "context"}:
        return DataFormat.multiple_choice
    return DataFormat.text


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of every row of a JSONL or CSV/TSV file (with a header)."""
    path = Path(path)
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        if path.suffix.lower() in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
                if not reader.fieldnames:
                    raise TaskError(f"{path}: needs a header row naming the columns")
                records = [(i + 2, dict(r)) for i, r in enumerate(reader)]
        else:
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TaskError(f"{path}:{i}: not JSON ({exc.msg}); expected JSONL") from None
                if not isinstance(obj, dict):
                    raise TaskError(f"{path}:{i}: expected an object with 'text' (and 'label')")
                records.append((i, obj))
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: cannot read: {exc}") from exc
    if not records:
        raise TaskError(f"{path}: no rows")
    return records


__all__ = ["DataFormat", "detect_format", "read_records"]
