"""The fake's own record of what happened to predictions, in the order it happened: each one created and
ended, and each download of its output started and finished, with the predictions in flight just after.

Tests read the order (was clip 1's prediction created while clip 0's output was still downloading?), not
the times: the times are there for measurements.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

EventKind = Literal["created", "ended", "download_started", "download_finished"]


@dataclass(frozen=True)
class FakeEvent:
    """One thing that happened to a prediction at the fake."""

    kind: EventKind
    prediction_id: str
    prompt: str  # the prediction's input `prompt`, which tells a test which clip it is
    in_flight: int  # predictions starting or processing just after it
    status: str | None = None  # ended: the final status; download_finished: the HTTP status answered
    at: float = 0.0  # time.monotonic() in the process serving the fake

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Timeline:
    """The last `size` events, oldest first. Thread-safe."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._events: deque[FakeEvent] = deque(maxlen=size)

    def add(
        self, kind: EventKind, prediction_id: str, prompt: str, in_flight: int, status: str | None = None
    ) -> None:
        event = FakeEvent(kind, prediction_id, prompt, in_flight, status, time.monotonic())
        with self._lock:
            self._events.append(event)

    def events(self) -> list[FakeEvent]:
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
