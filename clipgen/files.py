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
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
