"""Atomic outputs: write into a temporary sibling, then rename into place."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coto_tools.errors import CotoError, OutputExistsError


class OutputWriteError(OSError, CotoError):
    """Writing or renaming an output failed (disk full, permissions, a busy path): an
    ``OSError`` that the command line shows as one error line."""

    def __str__(self) -> str:
        return str(self.strerror)


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


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the siblings of ``path`` left by runs that were killed (their process ``<pid>`` no
    longer exists); returns what was removed. ``.<name>.tmp-<pid>-*`` is a half-written output;
    ``.<name>.old-<pid>-*`` is an old output a ``--force`` replacement had moved aside: it is
    put back when ``path`` is missing (the kill came between the two renames), else removed.
    Siblings of a live process, or without a pid in their name, are left alone."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    heads = (f".{path.name}.tmp-", f".{path.name}.old-")
    removed: list[Path] = []
    try:
        entries = sorted(p for p in parent.iterdir() if p.name.startswith(heads))
    except OSError:
        return removed
    for entry in entries:
        head = heads[0] if entry.name.startswith(heads[0]) else heads[1]
        pid_text = entry.name[len(head) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            if head == heads[1] and not (path.exists() or path.is_symlink()):
                os.rename(entry, path)  # the old output comes back: nothing is lost
                continue
            _remove(entry)
        except OSError:
            continue
        removed.append(entry)
    return removed


def _no_clobber_rename(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist (atomically: a file is linked,
    which fails if ``path`` appeared; a directory rename fails onto a non-empty directory)."""
    if tmp.is_dir():
        if path.exists() or path.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(path))
        try:
            os.rename(tmp, path)
        except OSError as exc:  # another writer's output arrived in between
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
            raise
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: check, then rename
        if path.exists() or path.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.rename(tmp, path)
        return
    tmp.unlink()


def _replace(tmp: Path, path: Path, parent: Path) -> None:
    """Put ``tmp`` at ``path``, moving whatever is there aside first (``--force``). Safe against
    concurrent writers of the same ``path``: each attempt moves the current occupant aside and
    retries, so every writer ends with a complete output at ``path`` (the last one's)."""
    if not tmp.is_dir() and not path.is_dir():
        os.replace(tmp, path)  # one atomic step: never a moment without ``path``
        return
    olds: list[Path] = []
    try:
        for _ in range(1000):
            if path.exists() or path.is_symlink():
                old = parent / f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:12]}"
                try:
                    os.rename(path, old)
                    olds.append(old)
                except FileNotFoundError:  # another writer moved it first
                    pass
            try:
                os.rename(tmp, path)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                    raise
        raise OSError(errno.EBUSY, "output kept changing while being replaced", str(path))
    finally:
        for old in olds:
            try:
                _remove(old)
            except OSError:
                pass


@contextmanager
def atomic_path(
    path: str | Path, *, force: bool = False, directory: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it to ``path``.

    A failure (or a kill) leaves ``path`` as it was; the temporary sibling is removed on
    exceptions (a SIGKILL can leave a ``.<name>.tmp-<pid>-*`` or ``.<name>.old-<pid>-*`` sibling
    behind, never a partial ``path``; the next write of ``path`` cleans them up, see
    :func:`remove_stale_temps`). An existing ``path`` is refused unless ``force``; an
    ``OSError`` while writing or renaming becomes one :class:`CotoError` line.
    """
    path = Path(path)
    remove_stale_temps(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: output exists; pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CotoError(f"{parent}: cannot create output directory: {exc.strerror or exc}") from exc
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
        if not force:
            try:
                _no_clobber_rename(tmp, path)
            except FileExistsError:
                raise OutputExistsError(
                    f"{path}: output appeared while writing; not overwritten"
                ) from None
        else:
            _replace(tmp, path, parent)
    except BaseException as exc:
        try:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, CotoError):
            raise OutputWriteError(
                exc.errno, f"{path}: cannot write the output: {exc.strerror or exc}"
            ) from exc
        raise


def atomic_write_text(path: str | Path, text: str, *, force: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (overwrites by default: for run outputs)."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text)
    return Path(path)
