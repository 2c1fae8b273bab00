"""Counting the files a piece of code opens, from the interpreter's own `open` audit events.

Pillow opens a path with the builtin `open`, and so does everything else that reads or writes a file, so
this sees the real work without patching anything. An audit hook cannot be removed: one counter is
installed per process, and it does nothing (one attribute test) unless a test has armed it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any


class OpenCounter:
    """Counts `open` events of one file, or of every file under one directory; with `reads_only`, only
    the opens for reading by name (`open(path, "rb")`, as Pillow's), not a writer's `os.open`."""

    def __init__(self) -> None:
        self._watched: str | None = None
        self._under = False
        self._reads_only = False
        self._opened: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self._watched is None or event != "open" or isinstance(args[0], int):
            return
        if self._reads_only and not (isinstance(args[1], str) and "r" in args[1] and "+" not in args[1]):
            return
        # Compared by spelling, with nothing in the hook that could itself raise an audit event.
        path = os.path.abspath(os.fsdecode(args[0]))
        if path == self._watched or (self._under and path.startswith(self._watched + os.sep)):
            with self._lock:
                self._opened[path] += 1

    def arm(self, path: Path, *, reads_only: bool = False) -> None:
        """Count opens of `path`, or of every file under it when it is a directory."""
        with self._lock:
            self._watched, self._under = str(path.resolve()), path.is_dir()
            self._reads_only = reads_only
            self._opened = Counter()

    @property
    def opened(self) -> Counter[str]:
        """Opens so far, by path."""
        with self._lock:
            return Counter(self._opened)

    def disarm(self) -> int:
        """Stop counting; how many opens there were."""
        with self._lock:
            self._watched = None
            return sum(self._opened.values())


_COUNTER: OpenCounter | None = None
_INSTALL = threading.Lock()


def open_counter() -> OpenCounter:
    """The process's counter, its audit hook installed the first time."""
    global _COUNTER
    with _INSTALL:
        if _COUNTER is None:
            _COUNTER = OpenCounter()
            sys.addaudithook(_COUNTER)
        return _COUNTER
