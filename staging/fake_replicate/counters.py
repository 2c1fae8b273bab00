"""What the fake counts for tests and benchmarks that measure a client: predictions created, creates
rejected, connections reset, cancels, predictions in flight (now, at the most, and after every change), and
the create requests answered. Thread-safe, like the timeline; a reset makes a new one."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

HISTORY = 10_000  # create requests, in-flight changes and timeline events remembered, for measuring clients


@dataclass(frozen=True)
class CreateRequest:
    """One create request as the fake saw it: when it arrived and was answered (time.monotonic(), the
    clock of the process serving the fake) and the status it got (201; 0 for a dropped connection)."""

    arrived: float
    answered: float
    status: int


class Counters:
    """The counts since the start or the last reset. The fake changes `in_flight` (created, ended) under
    its own lock too, so that it reads the same number for the timeline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.creates = self.cancels = self.connection_resets = 0
        self.in_flight = self.max_in_flight = 0
        self.rejected: Counter[int] = Counter()
        self._create_log: deque[CreateRequest] = deque(maxlen=HISTORY)
        self._in_flight_log: deque[tuple[float, int]] = deque([(time.monotonic(), 0)], maxlen=HISTORY)

    def created(self) -> None:
        with self._lock:
            self.creates += 1
            self._in_flight_changed(+1)

    def ended(self) -> None:
        with self._lock:
            self._in_flight_changed(-1)

    def _in_flight_changed(self, by: int) -> None:
        self.in_flight += by
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._in_flight_log.append((time.monotonic(), self.in_flight))

    def canceled(self) -> None:
        """A cancel request for a known prediction (one already finished too)."""
        with self._lock:
            self.cancels += 1

    def reject(self, status: int) -> None:
        """A create answered with `status` and nothing created."""
        with self._lock:
            self.rejected[status] += 1

    def record_reset(self) -> None:
        """A create's connection dropped without an answer."""
        with self._lock:
            self.connection_resets += 1

    def log_create(self, arrived: float, status: int) -> None:
        """A create request answered (or dropped: status 0) just now."""
        with self._lock:
            self._create_log.append(CreateRequest(arrived, time.monotonic(), status))

    def create_log(self) -> list[CreateRequest]:
        """The create requests answered (the last HISTORY), oldest first."""
        with self._lock:
            return list(self._create_log)

    def in_flight_history(self) -> list[tuple[float, int]]:
        """(time.monotonic(), predictions in flight) after every change since the start or reset."""
        with self._lock:
            return list(self._in_flight_log)

    def as_json(self, *, billed: int, uploads: int) -> dict[str, Any]:
        """The counters of GET /_fake/state, with the `billed` predictions and file `uploads` the fake
        counts elsewhere."""
        with self._lock:
            return {
                "creates": self.creates,
                "billed": billed,
                "rejected_creates": {str(code): n for code, n in sorted(self.rejected.items())},
                "connection_resets": self.connection_resets,
                "cancels": self.cancels,
                "uploads": uploads,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
            }
