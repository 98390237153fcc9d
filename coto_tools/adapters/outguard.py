"""The one rule for "is this output safe to write or replace", used by every writing command.

An output path is refused, before anything is touched, when (symlinks resolved, and also as
written, since replacing a link replaces the link):

* it equals an input, or contains one (replacing it, or writing into it, would destroy or change
  the input), or (when it would be replaced as a whole) it is the working directory or one of
  its parents;
* it lies inside an input, unless ``inside_ok`` (the analysis commands put their own new
  folder, e.g. ``<run>/shapley/``, inside a run directory: they never replace a file there);
* it exists and would be replaced as a whole (``replaces``: an adapter, a run directory), and
  either ``force`` is not given or the existing thing is neither something coto-tools wrote
  (:func:`coto_written`) nor an empty folder: ``--force`` never replaces anything else,
  whatever the flags;
* it exists, is not a directory, and the command writes a folder of files (``replaces`` false).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from coto_tools.adapters.atomic import remove_stale_temps
from coto_tools.errors import OptionError, OutputExistsError

PROVENANCE_FILES = ("coto_provenance.json",)
"""A directory holding one of these was written by coto-tools (merge / prune --write-pruned)."""
RECORD_FILES = ("coto.json", "reproduce.json")
"""JSON records whose ``format`` starts with ``coto-tools/`` (train runs, reproductions)."""
_HEADER_CAP = 100 << 20  # the safetensors header of a bare file, at most (its JSON)


def _forms(path: Path) -> list[Path]:
    """``path`` made absolute as written and with symlinks resolved (both, deduplicated)."""
    absolute = Path(os.path.abspath(path))
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: the written form alone
        return [absolute]
    return [absolute] if resolved == absolute else [absolute, resolved]


def _within(inner: Path, outer: Path) -> bool:
    """``inner`` equals ``outer`` or lies inside it."""
    return inner == outer or outer in inner.parents


def _record_is_ours(path: Path) -> bool:
    try:
        if path.stat().st_size > 1 << 20:
            return False
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and str(obj.get("format", "")).startswith("coto-tools/")


def _bare_is_ours(path: Path) -> bool:
    """A bare ``.safetensors`` adapter whose metadata config carries coto-tools' provenance."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > _HEADER_CAP:
                return False
            header = json.loads(fh.read(n).decode("utf-8"))
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        cfg = json.loads(meta.get("adapter_config", "")) if isinstance(meta, dict) else None
    except (OSError, ValueError, RecursionError, UnicodeDecodeError, AttributeError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("coto"), dict)


def coto_written(path: str | Path) -> bool:
    """Whether ``path`` is an output coto-tools wrote (and so ``--force`` may replace it): a
    directory with a provenance file (:data:`PROVENANCE_FILES`) or a coto-tools record
    (:data:`RECORD_FILES`), or a bare ``.safetensors`` adapter whose metadata carries the
    ``coto`` provenance. Symlinks are never ours."""
    p = Path(path)
    if p.is_symlink():
        return False
    if p.is_dir():
        if any((p / f).is_file() for f in PROVENANCE_FILES):
            return True
        return any(_record_is_ours(p / f) for f in RECORD_FILES if (p / f).is_file())
    if p.is_file() and p.suffix == ".safetensors":
        return _bare_is_ours(p)
    return False


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    except OSError:
        return False


def check_output(
    out: str | Path,
    inputs: Iterable[str | Path | None] = (),
    *,
    force: bool = False,
    replaces: bool = True,
    inside_ok: bool = False,
    option: str = "--out",
) -> Path:
    """Refuse an unsafe output path (see the module docstring); returns ``Path(out)``.

    ``inputs``: every path the command reads (``None`` entries are skipped). ``replaces``: the
    output is replaced as a whole (an adapter or run directory) rather than filled with files.
    """
    out = Path(out)
    remove_stale_temps(out)  # a killed run's siblings: an old output moved aside comes back
    outs = _forms(out)
    cwd = Path(os.getcwd())
    for o in outs if replaces else ():
        if _within(cwd, o):
            raise OptionError(
                f"{option} {out}: is the working directory or one of its parents; refusing to "
                "write there"
            )
    pairs = [(g, i, o) for g in inputs if g is not None for i in _forms(Path(g)) for o in outs]
    for given, i, o in pairs:
        if _within(i, o):
            what = "is" if i == o else "contains"
            raise OptionError(
                f"{option} {out}: {what} the input {given}; the output would overwrite an input "
                "(choose another path)"
            )
    for given, i, o in pairs if not inside_ok else ():
        if i in o.parents:
            raise OptionError(
                f"{option} {out}: lies inside the input {given}; write outputs outside the inputs"
            )
    if not (out.exists() or out.is_symlink()):
        return out
    if not replaces:
        if not out.is_dir():
            raise OutputExistsError(f"{option} {out}: exists and is not a directory")
        return out
    if not force:
        raise OutputExistsError(f"{out}: output exists; pass --force to overwrite it")
    if _empty_dir(out):  # nothing there to lose
        return out
    if not coto_written(out):
        raise OutputExistsError(
            f"{out}: exists and was not written by coto-tools; --force replaces only "
            "coto-tools outputs, so it is left alone (choose another path)"
        )
    return out


def task_files(spec: str | None) -> list[Path]:
    """The local files and folders a task spec (``NAME:{JSON}``, see
    :func:`coto_tools.tasks.task_spec`) reads: ``data``, a local ``base_model``, a plugin's
    ``file.py`` (and the same inside a plugin's ``options``). Inputs for :func:`check_output`."""
    if not spec or ":" not in spec:
        return []
    _, _, raw = spec.partition(":")
    try:
        options = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    found: list[Path] = []

    def visit(opts: object) -> None:
        if not isinstance(opts, dict):
            return
        for key in ("data", "base_model"):
            value = opts.get(key)
            if isinstance(value, str) and value and Path(value).exists():
                found.append(Path(value))
        plugin = opts.get("spec")
        if isinstance(plugin, str) and ".py:" in plugin:
            found.append(Path(plugin.rpartition(":")[0]))
        elif isinstance(plugin, str) and ":" in plugin:  # module:function, a top-level module
            module = plugin.rpartition(":")[0]
            if module.isidentifier():  # found without importing (no package code runs)
                try:
                    origin = getattr(importlib.util.find_spec(module), "origin", None)
                except (ImportError, ValueError):
                    origin = None
                if origin and Path(origin).is_file():
                    found.append(Path(origin))
        visit(opts.get("options"))

    visit(options)
    return found
