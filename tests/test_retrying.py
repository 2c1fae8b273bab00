"""The in-place retry's rule, on plain calls that fail: it never stacks on a retry above it (a task's attempt,
another in-place retry), except for a call the task's retry cannot redo. The Supabase store under the same
rule, counted at the gateway: tests/test_supabase_retries.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clipgen.errors import TransientError
from clipgen.retrying import attempt_retried_by_task, retried


class Outage:
    """A request that always fails, counting how often it was sent."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self) -> None:
        self.sent += 1
        raise TransientError("503 (an outage)")


def always(exc: Exception) -> bool:
    return True


def try_in_place(call: Callable[[], None], *, keep_tries: bool = False) -> None:
    with pytest.raises(TransientError):
        retried("a request", call, retry_on=always, first_delay_s=0, retry_inside_attempt=keep_tries)


def test_with_nothing_above_a_call_gets_its_tries() -> None:
    outage = Outage()
    try_in_place(outage)
    assert outage.sent == 3


def test_inside_a_task_attempt_a_call_is_sent_once_for_the_task_to_retry() -> None:
    outage = Outage()
    for _attempt in range(3):  # the clip task's three attempts
        with attempt_retried_by_task():
            try_in_place(outage)
    assert outage.sent == 3  # not 3 x 3


def test_a_call_marked_retry_inside_attempt_keeps_its_tries_inside_an_attempt() -> None:
    outage = Outage()
    with attempt_retried_by_task():
        try_in_place(outage, keep_tries=True)
    assert outage.sent == 3


def test_a_retried_call_inside_another_is_sent_once_per_outer_try() -> None:
    """A ledger write's tries around the store's own: 3 requests, not 3 x 3."""
    store_request = Outage()

    def store_write() -> None:
        retried("the store's request", store_request, retry_on=always, first_delay_s=0)

    with attempt_retried_by_task():
        try_in_place(store_write, keep_tries=True)
    assert store_request.sent == 3


def test_the_attempt_ends_with_its_block() -> None:
    outage = Outage()
    with attempt_retried_by_task():
        pass
    try_in_place(outage)
    assert outage.sent == 3
