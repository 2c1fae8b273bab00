"""Retries inside one attempt. This module owns the in-place retry: every call that is tried again where it
failed (a download, a cancel, a store request, a ledger write) goes through `retried`.

Its budget is small and fixed by the caller (3 tries, 0.5 s then 1 s apart by default). What it gives up
on is raised as it is; the clip task's own retries (tasks/clips.py) decide whether the whole attempt goes
again. Which calls retry here and which are left to the task is written down in tasks/__init__.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

TRIES = 3
FIRST_DELAY_S = 0.5


def retried(
    what: str,
    call: Callable[[], T],
    *,
    retry_on: Callable[[Exception], bool],
    tries: int = TRIES,
    first_delay_s: float = FIRST_DELAY_S,
) -> T:
    """`call()`, tried up to `tries` times while it raises an error `retry_on` accepts, waiting
    `first_delay_s`, then twice as long each time. The last error, or one not accepted, is raised."""
    for attempt in range(1, tries + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == tries or not retry_on(exc):
                raise
            log.warning("%s failed (try %d of %d): %s", what, attempt, tries, exc)
        time.sleep(first_delay_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable: the last try returns or raises")
