"""Atomic file writes. This module owns writing files: the package writes every file through `atomic_write`.

A file is written under a temporary name in its own directory, flushed and fsynced, then renamed over its
destination, so a reader (another worker, a crash, a second run writing the same clip) sees the old file
or the whole new one, never part of either. A failed write leaves nothing behind. `create_once` is the
same for a file that must never be replaced once made (a key two processes may make at once).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4


@contextmanager
def atomic_write(dest: Path, suffix: str = ".part") -> Iterator[Path]:
    """A fresh temporary path next to `dest` to write to; on a clean exit it is fsynced and renamed to
    `dest`, on an error removed. `suffix` ends the temporary name (some writers pick a format by it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer (mkstemp), in the same directory so the rename stays on one filesystem.
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)  # a crash after the rename must not leave a short file under the real name
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_write(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: Path, text: str) -> None:
    with atomic_write(dest) as tmp:
        tmp.write_text(text)


def copy_file(source: Path, dest: Path) -> None:
    """Copy `source` over `dest`. A missing source fails before any temporary file exists."""
    with open(source, "rb") as src, atomic_write(dest) as tmp, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1024 * 1024)


def link_or_copy(source: Path, dest: Path) -> None:
    """Put `source` at `dest` as `copy_file` does, but by a hard link when both are on one filesystem: no
    bytes are copied, and `dest` appears whole at once (linked under a temporary name, renamed over it).

    A link shares the file, so bytes written into `source` later would show at `dest` too: only for a
    source that is never written in place. Every file this package writes is (`atomic_write` renames a new
    file over the old one). Anything else, or a source on another filesystem, is copied.
    """
    if not stat.S_ISREG(os.stat(source).st_mode):
        copy_file(source, dest)  # a directory or a pipe: copy_file says what fails, or copies what flows
        return
    _fsync_readable(source)  # the link must not expose bytes a crash could still lose
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid4().hex}.link")
    try:
        os.link(source, tmp)
    except OSError:  # another filesystem (EXDEV), or one without hard links
        copy_file(source, dest)
        return
    try:
        os.replace(tmp, dest)
    finally:
        # When dest already is a link of the same file, rename does nothing and leaves tmp (POSIX).
        tmp.unlink(missing_ok=True)


def create_once(dest: Path, data: bytes, mode: int = 0o600) -> None:
    """Put `data` at `dest` unless a file is there already, atomically: written and fsynced under a private
    temporary name, then linked into place, which fails if another writer got there first (then its file
    stands, and ours is dropped)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, dest)  # never replaces what another process made
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_readable(path: Path) -> None:
    """fsync through a read-only descriptor (Linux flushes the file's data whichever way it was opened)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
