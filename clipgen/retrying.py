"""Retries in place. This module owns them: every call that is tried again where it failed (a store request,
a download, a cancel, a ledger write) goes through `retried`, and `retried` does not stack on a retry above.

One failure, one retrying layer, the nearest one that can stand in for the call:
- inside one attempt of a task that retries its attempts (`attempt_retried_by_task`, which tasks/clips.py
  enters), the task's retry is the call's: `retried` sends it once. Except the few calls that keep their
  tries there (`retry_inside_attempt`), because a new attempt cannot redo them (a ledger write, a cancel) or
  would redo it only after a paid output was lost to the run (its download);
- inside another `retried` call, the outer call's tries are this one's: it is sent once per outer try;
- anywhere else (serve, the CLI, the queue worker's claims, the flow's own reads, a lease kept alive in its
  own thread) nothing above retries, and the call gets its budget: 3 tries, 0.5 s then 1 s apart by
  default.
What it gives up on is raised as it is. Each layer's budget is written down in tasks/__init__.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

TRIES = 3
FIRST_DELAY_S = 0.5

# Context variables, not globals: each clip attempt runs in a worker thread of its own (a thread started
# inside one, like a lease keeper, starts outside it, which is right: nothing retries it from above).
_task_retries_attempt: ContextVar[bool] = ContextVar("task_retries_attempt", default=False)
_retrying_above: ContextVar[bool] = ContextVar("retrying_above", default=False)


@contextmanager
def attempt_retried_by_task() -> Iterator[None]:
    """The code inside is one attempt of a task that runs it again when it fails with a TransientError."""
    token = _task_retries_attempt.set(True)
    try:
        yield
    finally:
        _task_retries_attempt.reset(token)


def retried(
    what: str,
    call: Callable[[], T],
    *,
    retry_on: Callable[[Exception], bool],
    tries: int = TRIES,
    first_delay_s: float = FIRST_DELAY_S,
    retry_inside_attempt: bool = False,
) -> T:
    """`call()`, tried up to `tries` times while it raises an error `retry_on` accepts, waiting
    `first_delay_s`, then twice as long each time. The last error, or one not accepted, is raised.

    Called once, with no retry, when a retry above stands in for it (see the module's docstring)."""
    if _retrying_above.get() or (_task_retries_attempt.get() and not retry_inside_attempt):
        return call()
    token = _retrying_above.set(True)
    try:
        return _tried(what, call, retry_on, tries, first_delay_s)
    finally:
        _retrying_above.reset(token)


def _tried(
    what: str, call: Callable[[], T], retry_on: Callable[[Exception], bool], tries: int, first_delay_s: float
) -> T:
    for attempt in range(1, tries + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == tries or not retry_on(exc):
                raise
            log.warning("%s failed (try %d of %d): %s", what, attempt, tries, exc)
        time.sleep(first_delay_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable: the last try returns or raises")
