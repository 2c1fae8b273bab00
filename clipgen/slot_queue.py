"""The clips of one process that wait for a slot of a shared limit, served first come, first served.

A limit shared by every worker (Prefect's global concurrency limit) hands slots out by polling: a request
that finds it full is refused, and Prefect's own retry then sleeps for about a slot's average occupancy
(seconds to minutes for a video model), so a freed slot could stay idle that long while clips wait. Here
only the clip whose turn it is asks the server, every `poll_s` or at once when a slot of this process is given
back; the others wait their turn in order. So a process sends one request per poll however many clips wait,
a slot is taken up within about a poll of being freed, and no clip is overtaken by a later one of the same
process (a later job's clips cannot starve an earlier job's).
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

JITTER = 0.5  # polls are spread by up to this share, so workers do not ask in step


class SlotQueue:
    def __init__(self, poll_s: float) -> None:
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._serving = 0
        self._freed = False

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait until every clip that came before has its slot (or gave up), then hold the turn to ask."""
        with self._cond:
            ticket = next(self._tickets)
            self._cond.wait_for(lambda: self._serving == ticket)
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()

    def wait(self) -> None:
        """During a turn: until it is worth asking again (a poll later, or a slot of this process freed)."""
        timeout = self._poll_s * random.uniform(1 - JITTER, 1 + JITTER)
        with self._cond:
            self._cond.wait_for(lambda: self._freed, timeout=timeout)
            self._freed = False

    def freed(self) -> None:
        """A slot of this process was given back: the clip whose turn it is asks now."""
        with self._cond:
            self._freed = True
            self._cond.notify_all()
