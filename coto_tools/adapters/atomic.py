"""Atomic outputs: write into a temporary sibling, then rename into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coto_tools.errors import CotoError, OutputExistsError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _public_modes(tmp: Path) -> None:
    """mkstemp/mkdtemp (and safetensors' writer) create private 0600/0700 entries; give the
    output the modes a plain ``open()`` would (0666/0777 less the umask)."""
    mask = _umask()
    if not tmp.is_dir():
        os.chmod(tmp, 0o666 & ~mask)
        return
    os.chmod(tmp, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(tmp):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists under another user
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary siblings ``.<name>.tmp-<pid>-*`` of ``path`` left by runs that were
    killed (their process ``<pid>`` no longer exists); returns what was removed. Siblings of a
    live process, or without a pid in their name, are left alone."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    head = f".{path.name}.tmp-"
    removed: list[Path] = []
    try:
        entries = [p for p in parent.iterdir() if p.name.startswith(head)]
    except OSError:
        return removed
    for entry in entries:
        pid_text = entry.name[len(head) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


@contextmanager
def atomic_path(
    path: str | Path, *, force: bool = False, directory: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it to ``path``.

    A failure (or a kill) leaves ``path`` as it was; the temporary sibling is removed on
    exceptions (a SIGKILL can leave a ``.<name>.tmp-<pid>-*`` sibling behind, never ``path``
    itself; the next write of ``path`` removes it, see :func:`remove_stale_temps`).
    An existing ``path`` is refused unless ``force``.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: output exists; pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CotoError(f"{parent}: cannot create output directory: {exc.strerror or exc}") from exc
    remove_stale_temps(path)
    prefix = f".{path.name}.tmp-{os.getpid()}-"
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise CotoError(f"{parent}: cannot write here: {exc.strerror or exc}") from exc
    try:
        yield tmp
        _public_modes(tmp)
        if path.exists():
            if not force:
                raise OutputExistsError(f"{path}: output appeared while writing; not overwritten")
            if not tmp.is_dir() and not path.is_dir():
                os.replace(tmp, path)  # one atomic step: never a moment without ``path``
                return
            old = parent / f".{path.name}.old-{os.getpid()}"
            os.rename(path, old)
            os.rename(tmp, path)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, *, force: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (overwrites by default: for run outputs)."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text)
    return Path(path)
