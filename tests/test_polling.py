"""The poll schedule (clipgen/polling.py) and the queue of clips waiting for a global slot
(clipgen/slot_queue.py): pure decisions and real threads, no timings asserted."""

from __future__ import annotations

import itertools
import threading

import pytest

from clipgen.polling import FINE_DIVISOR, LatencyHistory, next_poll_delay
from clipgen.slot_queue import SlotQueue


def polls_until(expected_s: float | None, ends_at_s: float, interval_s: float = 1.0) -> list[float]:
    """The moments a prediction that ends at `ends_at_s` is polled, up to the poll that sees it end."""
    moments, now = [], 0.0
    while now < ends_at_s:
        now += next_poll_delay(now, expected_s, interval_s)
        moments.append(now)
    return moments


def test_without_history_every_interval() -> None:
    assert polls_until(None, 10.0) == [float(i) for i in range(1, 11)]


@pytest.mark.parametrize("latency_s", [10.0, 60.0, 120.0, 300.0])
def test_with_history_few_polls_early_and_the_end_seen_within_a_fine_step(latency_s: float) -> None:
    moments = polls_until(latency_s, latency_s)
    assert len(moments) < latency_s  # fewer than one a second: under Replicate's rate limit at scale
    assert moments[-1] - latency_s <= 1.0 / FINE_DIVISOR + 1e-9  # the slot is given back promptly
    gaps = [b - a for a, b in itertools.pairwise([0.0, *moments])]
    assert max(gaps) <= 8.0  # an early failure is still seen within 8 intervals


def test_a_prediction_slower_than_expected_falls_back_to_the_interval() -> None:
    moments = polls_until(10.0, 30.0)
    late = [b - a for a, b in itertools.pairwise(moments) if a > 11.0]
    assert late and all(gap == 1.0 for gap in late)


def test_history_is_the_median_per_model() -> None:
    history = LatencyHistory(keep=3)
    assert history.expected("kwaivgi/kling") is None
    for seconds in (100.0, 10.0, 50.0, 60.0):  # the first falls out
        history.add("kwaivgi/kling", seconds)
    history.add("kwaivgi/kling", None)
    history.add(None, 5.0)
    assert history.expected("kwaivgi/kling") == 50.0
    assert history.expected("google/veo") is None


def test_clips_take_their_turn_to_ask_in_the_order_they_came() -> None:
    queue = SlotQueue(poll_s=30.0)  # no poll would come in time: only `freed` lets the turn go on
    served: list[int] = []
    first = threading.Event()

    def clip(number: int) -> None:
        with queue.turn():
            served.append(number)
            if number == 0:
                first.set()
                queue.wait()  # asks, is refused, waits for a slot of this process to be freed

    threads = [threading.Thread(target=clip, args=(0,))]
    threads[0].start()
    assert first.wait(10)
    for number in range(1, 5):
        thread = threading.Thread(target=clip, args=(number,))
        thread.start()
        threads.append(thread)
        # The next clip comes only once this one waits for its turn (clip 0 waits on the same condition).
        while len(queue._cond._waiters) < number + 1:  # type: ignore[attr-defined]
            threading.Event().wait(0.01)
    queue.freed()
    for thread in threads:
        thread.join(10)
    assert served == [0, 1, 2, 3, 4]
