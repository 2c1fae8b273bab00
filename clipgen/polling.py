"""When to poll a prediction next: rarely while it cannot be done yet, often around when it should end.

A prediction holds its slot of the prediction limit until a poll sees it end, so the poll that sees the end
decides how long a finished prediction keeps a slot it no longer needs. Polling every `interval` (1 s by
default) loses half an interval per prediction on average; polling four times as often all along would cost
four times the API calls, and Replicate allows 3000 a minute for everything but creates
(docs/architecture.md, "Slots and polling"). So the schedule follows the model's expected
latency, learned from the predictions that ended (`LatencyHistory`):

- early on, halve the time left to the expected end, at most EARLY_POLLS_S_PER_INTERVAL intervals apart (so a
  prediction that fails early is still seen within that);
- from two intervals before the expected end to one interval after it, every interval / FINE_DIVISOR;
- after that, or with no history of the model, every interval.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque

FINE_DIVISOR = 4
EARLY_POLLS_S_PER_INTERVAL = 8
HISTORY_PER_MODEL = 20
# Of Replicate's 3000 requests a minute (everything but creates), what polls may take; the rest is for list
# reads, model reads and cancels. A prediction with no history is polled once per interval.
POLLS_PER_MINUTE = 2400


def largest_prediction_limit(interval_s: float) -> int:
    """The most predictions in flight whose polls stay within POLLS_PER_MINUTE at this interval."""
    return int(POLLS_PER_MINUTE * interval_s / 60)


def next_poll_delay(elapsed_s: float, expected_s: float | None, interval_s: float) -> float:
    """Seconds to wait before polling a prediction that has run `elapsed_s` and is expected to take
    `expected_s` in all (None: unknown)."""
    if expected_s is None:
        return interval_s
    remaining = expected_s - elapsed_s
    if remaining > 2 * interval_s:
        return min(remaining / 2, EARLY_POLLS_S_PER_INTERVAL * interval_s)
    if remaining > -interval_s:
        return interval_s / FINE_DIVISOR
    return interval_s


class LatencyHistory:
    """Create-to-end seconds of recent succeeded predictions, per model; shared by a run's clip threads."""

    def __init__(self, keep: int = HISTORY_PER_MODEL) -> None:
        self._keep = keep
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, model: str | None, seconds: float | None) -> None:
        if not model or seconds is None or seconds <= 0:
            return
        with self._lock:
            self._seen.setdefault(model, deque(maxlen=self._keep)).append(seconds)

    def expected(self, model: str | None) -> float | None:
        """The median of the model's recent latencies, or None before any."""
        with self._lock:
            seen = list(self._seen.get(model or "", ()))
        return statistics.median(seen) if seen else None
