"""Reading the JSON files the tool reads (checked against the shape expected) and writing strict
JSON (no bare ``NaN``/``Infinity``, which are not JSON).

Every file coto-tools reads back (``reproduce.json``, ``done.json``, stage summaries, records)
may have been edited or damaged by hand: :func:`read_json` turns any problem (unreadable, not
UTF-8, invalid or non-standard JSON, nested too deep, not the expected type, a required key
missing or of the wrong type) into one :class:`JsonFileError` line naming the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coto_tools.errors import CotoError

MAX_DEPTH = 200
"""Deepest nesting accepted (the tool's own files nest a handful of levels)."""

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "true or false",
               int: "an integer", float: "a number", type(None): "null"}  # fmt: skip


class JsonFileError(CotoError):
    """A JSON file the tool reads is missing, damaged, or not of the expected shape."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is too large (not finite)")
    return value


def _depth(text: str) -> int:
    """Deepest bracket nesting of ``text`` outside strings (cheap, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads_strict(text: str, source: str) -> Any:
    """``json.loads`` refusing ``NaN``/``Infinity`` (also as an overflowing number such as
    ``1e400``) and nesting deeper than :data:`MAX_DEPTH`."""
    if len(text) <= 8 << 20 and _depth(text) > MAX_DEPTH:  # larger: RecursionError below
        raise JsonFileError(f"{source}: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise JsonFileError(f"{source}: invalid JSON: {exc.msg} at line {exc.lineno}") from None
    except (ValueError, RecursionError) as exc:
        raise JsonFileError(f"{source}: invalid JSON: {exc}") from None


def _type_name(t: type | tuple[type, ...]) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(_TYPE_NAMES.get(x, x.__name__) for x in ts)


def _is(value: Any, t: type | tuple[type, ...]) -> bool:
    ts = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in ts:
        return False
    if float in ts and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, ts)


def check_shape(
    value: Any,
    source: str,
    *,
    expect: type | tuple[type, ...] = dict,
    required: Mapping[str, type | tuple[type, ...]] | None = None,
    optional: Mapping[str, type | tuple[type, ...]] | None = None,
) -> Any:
    """``value`` if it is of type ``expect`` and (an object) has the ``required`` keys, and the
    ``optional`` ones where present, of the given types; else :class:`JsonFileError`."""
    if not _is(value, expect):
        raise JsonFileError(f"{source}: expected {_type_name(expect)}, got {_describe(value)}")
    if isinstance(value, dict):
        for key, t in (required or {}).items():
            if key not in value:
                raise JsonFileError(f"{source}: missing key {key!r}")
            if not _is(value[key], t):
                raise JsonFileError(
                    f"{source}: {key!r} must be {_type_name(t)}, got {_describe(value[key])}"
                )
        for key, t in (optional or {}).items():
            if key in value and value[key] is not None and not _is(value[key], t):
                raise JsonFileError(
                    f"{source}: {key!r} must be {_type_name(t)}, got {_describe(value[key])}"
                )
    return value


def _describe(value: Any) -> str:
    for t, name in _TYPE_NAMES.items():
        if type(value) is t:
            return name
    return type(value).__name__


def read_json(
    path: str | Path,
    *,
    expect: type | tuple[type, ...] = dict,
    required: Mapping[str, type | tuple[type, ...]] | None = None,
    optional: Mapping[str, type | tuple[type, ...]] | None = None,
    max_bytes: int = 256 << 20,
) -> Any:
    """Read and check one JSON file (see :func:`check_shape`); any problem is one
    :class:`JsonFileError` line naming ``path``."""
    p = Path(path)
    try:
        if p.stat().st_size > max_bytes:
            raise JsonFileError(f"{p}: larger than {max_bytes} bytes; not read")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise JsonFileError(f"{p}: not UTF-8 text (invalid JSON)") from None
    except OSError as exc:
        raise JsonFileError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return check_shape(
        loads_strict(text, str(p)), str(p), expect=expect, required=required, optional=optional
    )


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by ``None`` (JSON ``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # a numpy / torch scalar
        try:
            return finite_or_none(obj.item())
        except (TypeError, ValueError):
            return obj
    return obj


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` writing non-finite numbers as ``null`` (strict JSON, never bare NaN)."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
