"""clipgen/slot_lending.py: a slot of a shared limit is lent from a clip done with it to the next one waiting.

`SharedLimit` stands for the Prefect server's limit: a `hold` that takes one of its slots or is refused
when they are all taken, and counts what it was asked. The lender's threads are real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from clipgen.slot_lending import IDLE_S, LENDS_PER_HOLD, SlotLender, SlotRefused
from tests.waiting import wait_until

POLL_S = 0.01
WAIT_S = 10.0  # the longest a test waits for something that must happen


class SharedLimit:
    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self.taken = 0
        self.given_back = 0
        self.refused = 0
        self.given_back_event = threading.Event()
        self.before_take: list[threading.Event] = []  # the next takes wait for these, one each, then fail
        self.slow_take: list[threading.Event] = []  # the next takes wait for these, one each, then go on
        self._lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self.before_take:
            gate = self.before_take.pop(0)
            assert gate.wait(WAIT_S)
            raise RuntimeError("the server is down")
        if self.slow_take:
            assert self.slow_take.pop(0).wait(WAIT_S)
        with self._lock:
            if self.held == self.size:
                self.refused += 1
                raise SlotRefused("full")
            self.held += 1
            self.taken += 1
        try:
            yield
        finally:
            with self._lock:
                self.held -= 1
                self.given_back += 1
            self.given_back_event.set()


class Clips:
    """Clips in threads, each holding a slot of `lender` until the test lets it go (in the order taken)."""

    def __init__(self, lender: SlotLender, limit: SharedLimit) -> None:
        self.lender = lender
        self.limit = limit
        self.holding: list[threading.Event] = []  # set when a clip has its slot
        self.release: list[threading.Event] = []  # set by the test to let that clip go
        self.most_held = 0
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            holding, release = threading.Event(), threading.Event()
            self.holding.append(holding)
            self.release.append(release)
            thread = threading.Thread(target=self._clip, args=(holding, release))
            thread.start()
            self.threads.append(thread)

    def _clip(self, holding: threading.Event, release: threading.Event) -> None:
        try:
            with self.lender.slot():
                self.most_held = max(self.most_held, self.limit.held)
                holding.set()
                assert release.wait(WAIT_S)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.errors.append(exc)

    def run_one_at_a_time(self) -> None:
        """Let the clips go one by one, each once it holds a slot; there is one slot, so in turn."""
        for _ in range(len(self.holding)):
            any_set(self.holding, self.release)
            holder = next(
                i for i, h in enumerate(self.holding) if h.is_set() and not self.release[i].is_set()
            )
            self.release[holder].set()
        self.join()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT_S)
        assert not self.errors, self.errors


def any_set(holding: list[threading.Event], released: list[threading.Event]) -> bool:
    """Wait until a clip holds a slot and has not been let go."""
    wait_until(
        lambda: any(h.is_set() and not r.is_set() for h, r in zip(holding, released, strict=True)), WAIT_S
    )
    return True


def test_a_slot_is_lent_to_the_waiting_clips_and_given_back_after_its_lends() -> None:
    limit = SharedLimit(size=1)
    lender = SlotLender(limit.hold, POLL_S)
    clips = Clips(lender, limit)
    clips.start(LENDS_PER_HOLD + 3)
    any_set(clips.holding, clips.release)  # every clip asks before the first lets go

    clips.run_one_at_a_time()

    assert clips.most_held == 1
    # The first slot serves 1 + LENDS_PER_HOLD clips and is given back; the second serves the last 2.
    assert (limit.taken, limit.given_back, limit.held) == (2, 1, 1)
    lender.close()  # as at exit: the idle slot is given back at once
    assert (limit.taken, limit.given_back, limit.held) == (2, 2, 0)


def test_a_slot_is_lent_to_a_clip_that_asks_soon_after_and_given_back_when_none_does() -> None:
    limit = SharedLimit(size=2)
    lender = SlotLender(limit.hold, POLL_S)
    for _ in range(3):  # one clip after another, as a run's next clip asks once the last is done
        with lender.slot():
            assert limit.held == 1
    assert limit.taken == 1
    assert limit.given_back_event.wait(WAIT_S)  # after IDLE_S with no taker
    assert (limit.taken, limit.given_back, limit.held) == (1, 1, 0)


def test_a_full_limit_is_asked_again_until_a_slot_is_free() -> None:
    limit = SharedLimit(size=1)
    outside = SlotLender(limit.hold, POLL_S)  # another process, which cannot lend to this one
    lender = SlotLender(limit.hold, POLL_S)
    clips = Clips(lender, limit)
    with outside.slot():
        clips.start(1)
        wait_until(lambda: limit.refused >= 2, WAIT_S)
        assert not clips.holding[0].is_set()
    assert clips.holding[0].wait(WAIT_S)
    clips.release[0].set()
    clips.join()
    lender.close()
    assert limit.refused >= 2 and limit.taken == 2 and limit.held == 0


def test_a_lent_slot_nobody_takes_is_given_back() -> None:
    """The clip a slot was kept for stopped waiting (its own request to the server failed)."""
    limit = SharedLimit(size=2)
    lender = SlotLender(limit.hold, POLL_S)
    server_down = threading.Event()
    first = Clips(lender, limit)
    first.start(1)
    assert first.holding[0].wait(WAIT_S)
    limit.before_take.append(server_down)  # the second clip's take waits, then fails
    failing = Clips(lender, limit)
    failing.start(1)
    first.release[0].set()  # the second clip waits: the first's slot is kept for it
    first.join()
    server_down.set()
    for thread in failing.threads:
        thread.join(WAIT_S)
    assert [str(e) for e in failing.errors] == ["the server is down"]
    assert limit.given_back_event.wait(WAIT_S)  # after IDLE_S with no taker
    assert (limit.taken, limit.given_back, limit.held) == (1, 1, 0)


def test_a_slot_is_kept_for_a_clip_whose_request_to_the_server_is_slow() -> None:
    """On a loaded Prefect server, the next clip's own request can take longer than IDLE_S: the freed slot
    waits for it rather than being given back, which that request would only take again."""
    limit = SharedLimit(size=1)
    lender = SlotLender(limit.hold, POLL_S)
    first = Clips(lender, limit)
    first.start(1)
    assert first.holding[0].wait(WAIT_S)
    slow = threading.Event()
    limit.slow_take.append(slow)
    second = Clips(lender, limit)
    second.start(1)
    wait_until(lambda: not limit.slow_take, WAIT_S)  # the second clip's request is at the server
    first.release[0].set()
    first.join()
    time.sleep(3 * IDLE_S)  # longer than a slot is kept for no clip
    assert limit.given_back == 0
    slow.set()  # the request is answered: full, as this process holds the one slot; the clip borrows it
    assert second.holding[0].wait(WAIT_S)
    second.release[0].set()
    second.join()
    lender.close()
    assert (limit.taken, limit.refused, limit.given_back, limit.held) == (1, 1, 1, 0)


@pytest.mark.parametrize("count", [1, 3])
def test_every_slot_is_given_back_when_the_clips_are_done(count: int) -> None:
    limit = SharedLimit(size=count)
    lender = SlotLender(limit.hold, POLL_S)
    clips = Clips(lender, limit)
    clips.start(count)
    for holding in clips.holding:
        assert holding.wait(WAIT_S)
    for release in clips.release:
        release.set()
    clips.join()
    assert limit.given_back_event.wait(WAIT_S)
    lender.close()
    assert limit.held == 0 and limit.taken == limit.given_back == count
