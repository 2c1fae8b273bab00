"""An adaptive limit on one provider's concurrent paid predictions, shared by the clip threads of its run.

This module owns the waits after a 429 (how long creates pause, how many predictions run at once); it
retries nothing itself: the provider's create loop asks it when it may send again.

AIMD, the way TCP sizes its window:

- Unthrottled, every clip gets in (up to `ceiling`, when one is given).
- A 429 on a create halves the limit (from the number of predictions then in use, never below 1), sets one
  shared "not before" time from the API's reset hint, and starts probing: once the hint has passed, one
  create goes alone and the others wait for its answer. Creates already sent when the limit dropped belong
  to the same burst, so their 429s do not halve it again (nor do their successes count as recovery).
- Each create that succeeds (sent after the latest drop) ends probing and raises the limit by one, until it
  is back at the ceiling, or without one at the most predictions the run ever had in use; then the limit is
  lifted.

A `Slot` is one prediction's place: taken before its create (or before re-attaching to it while it runs) and
held until the prediction ends, so a lower limit really means fewer predictions running. A create that
got a 429 made nothing, so its slot gives its place up while it waits, and gets one back ahead of every
clip that came after it (places go first come, first served). A slot waits only for the hint, for the
probe's answer and for places held by other predictions (which end: each runs against its deadline), never
for itself, so a clip retrying its create after a 429 cannot deadlock.

The blocking calls wait on a `threading.Condition`; `try_acquire` and `try_ready` are the same decisions
without blocking, for tests driven by a fake `clock`.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from clipgen.errors import HintTooLong

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LimitStats:
    """A consistent view of the limit, for tests and logs."""

    limit: int | None  # None: not throttled (only the ceiling applies)
    ceiling: int | None
    peak: int  # the most slots ever in use at once
    in_use: int  # slots holding a place: a create in the air, or a prediction until `generate` returns
    creating: int  # creates in the air
    waiting: int  # slots waiting for a place or for their turn to create
    probing: bool  # after a 429, until a create succeeds: one create at a time
    wait_s: float  # until creates may be sent again (0: now)
    rate_limited: int  # 429s recorded
    created: int  # successful creates recorded
    drops: int  # times the limit was lowered


class AdaptiveLimit:
    def __init__(
        self,
        ceiling: int | None = None,
        *,
        name: str = "predictions",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ceiling is not None and ceiling < 1:
            raise ValueError("the ceiling must be at least 1")
        self.name = name
        self._clock = clock
        self._cond = threading.Condition()
        self._ceiling = ceiling
        self._limit: int | None = None
        self._in_use = self._peak = self._creating = 0
        self._probing = False
        self._not_before = -math.inf
        self._epoch = 0  # bumped by every drop; a create remembers the epoch it was sent in
        self._tickets = itertools.count()
        self._queued: set[int] = set()  # tickets waiting for a place
        self._at_gate: set[int] = set()  # tickets holding a place, waiting for their turn to create
        self._rate_limited = self._created = self._drops = 0

    # --- reading and configuring ------------------------------------------------------------------------

    def stats(self) -> LimitStats:
        with self._cond:
            return LimitStats(
                limit=self._limit,
                ceiling=self._ceiling,
                peak=self._peak,
                in_use=self._in_use,
                creating=self._creating,
                waiting=len(self._queued | self._at_gate),
                probing=self._probing,
                wait_s=max(0.0, self._not_before - self._clock()),
                rate_limited=self._rate_limited,
                created=self._created,
                drops=self._drops,
            )

    @property
    def ceiling(self) -> int | None:
        return self._ceiling

    def set_ceiling(self, ceiling: int | None) -> None:
        """The most slots in use at once, throttled or not (None: no cap but the limit)."""
        if ceiling is not None and ceiling < 1:
            raise ValueError("the ceiling must be at least 1")
        with self._cond:
            self._ceiling = ceiling
            if self._limit is not None and ceiling is not None and self._limit >= ceiling:
                self._limit = None
            self._cond.notify_all()

    def slot(self) -> Slot:
        """A new slot, not holding a place yet: `with limit.slot() as slot:` waits for one."""
        with self._cond:
            return Slot(self, next(self._tickets))

    # --- decisions (under the lock) ---------------------------------------------------------------------

    def _cap(self) -> float:
        caps = [cap for cap in (self._limit, self._ceiling) if cap is not None]
        return min(caps) if caps else math.inf

    def _admit(self, slot: Slot, *, queue: bool) -> bool:
        """Give `slot` a place if one is free and no earlier slot is waiting for one; else, if `queue`,
        put it in line."""
        if slot.admitted:
            return True
        if self._in_use >= self._cap() or any(ticket < slot.ticket for ticket in self._queued):
            if queue:
                self._queued.add(slot.ticket)
            return False
        self._queued.discard(slot.ticket)
        slot.admitted = True
        self._in_use += 1
        self._peak = max(self._peak, self._in_use)
        self._cond.notify_all()  # the next in line may fit too
        return True

    def _gate(self, slot: Slot, *, queue: bool) -> float:
        """0: `slot` may send its create now (it is then in the air). Otherwise the seconds to wait for the
        reset hint, or inf: until another slot moves. `queue`: wait in line (blocking callers)."""
        if slot.creating:
            raise RuntimeError("this slot already has a create in the air")
        if not self._admit(slot, queue=queue):
            return math.inf
        wait = self._not_before - self._clock()
        behind = any(ticket < slot.ticket for ticket in self._at_gate)
        if wait > 0 or (self._probing and (self._creating > 0 or behind)):
            if queue:
                self._at_gate.add(slot.ticket)
            return wait if wait > 0 else math.inf
        self._at_gate.discard(slot.ticket)
        self._creating += 1
        slot.creating, slot.epoch = True, self._epoch
        return 0.0

    def _end_create(self, slot: Slot) -> None:
        if not slot.creating:
            raise RuntimeError("this slot has no create in the air")
        slot.creating = False
        self._creating -= 1
        self._cond.notify_all()

    # --- what a slot does (Slot delegates here) ---------------------------------------------------------

    def _acquire(self, slot: Slot) -> None:
        with self._cond:
            while not self._admit(slot, queue=True):
                self._cond.wait()

    def _ready(self, slot: Slot, max_hint_wait_s: float) -> None:
        with self._cond:
            while (wait := self._gate(slot, queue=True)) > 0:
                if math.isinf(wait):
                    self._cond.wait()
                    continue
                if slot.hint_waited + wait > max_hint_wait_s:
                    self._at_gate.discard(slot.ticket)
                    self._cond.notify_all()
                    raise HintTooLong(wait)
                started = self._clock()
                self._cond.wait(wait)
                slot.hint_waited += max(0.0, self._clock() - started)

    def _succeeded(self, slot: Slot) -> None:
        with self._cond:
            self._end_create(slot)
            self._created += 1
            if slot.epoch != self._epoch or self._limit is None:
                return  # unthrottled, or sent before the latest drop: says nothing about now
            self._probing = False
            target = self._ceiling if self._ceiling is not None else self._peak
            if self._limit + 1 >= target:
                self._limit = None
                log.info("%s: creates succeed again; limit lifted (back to %d at once)", self.name, target)
            else:
                self._limit += 1
                log.debug("%s: create succeeded; limit raised to %d", self.name, self._limit)

    def _throttled(self, slot: Slot, retry_after_s: float) -> None:
        with self._cond:
            self._end_create(slot)
            self._rate_limited += 1
            self._not_before = max(self._not_before, self._clock() + max(0.0, retry_after_s))
            self._probing = True
            if slot.epoch == self._epoch:
                # The first 429 of a burst: halve what was really in use (this slot included).
                self._limit = max(1, int(min(self._in_use, self._cap())) // 2)
                self._epoch += 1
                self._drops += 1
                log.info(
                    "%s: rate limited (429); at most %d at a time now, creates wait %.1f s",
                    self.name,
                    self._limit,
                    retry_after_s,
                )
            # The create made nothing: give the place up while waiting (the ticket keeps this slot's turn).
            slot.admitted = False
            self._in_use -= 1

    def _failed(self, slot: Slot) -> None:
        with self._cond:
            self._end_create(slot)

    def _release(self, slot: Slot) -> None:
        with self._cond:
            if slot.creating:
                self._end_create(slot)
            if slot.admitted:
                slot.admitted = False
                self._in_use -= 1
            self._queued.discard(slot.ticket)
            self._at_gate.discard(slot.ticket)
            self._cond.notify_all()

    def _try_acquire(self, slot: Slot) -> bool:
        with self._cond:
            return self._admit(slot, queue=False)

    def _try_ready(self, slot: Slot) -> float:
        with self._cond:
            return self._gate(slot, queue=False)


class Slot:
    """One prediction's place under an `AdaptiveLimit`. Not thread-safe: one thread uses it."""

    def __init__(self, limit: AdaptiveLimit, ticket: int) -> None:
        self._limit = limit
        self.ticket = ticket
        self.admitted = False
        self.creating = False
        self.epoch = -1
        self.hint_waited = 0.0  # seconds this slot has spent waiting for reset hints

    def __enter__(self) -> Slot:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Wait for a place (first come, first served)."""
        self._limit._acquire(self)

    def ready(self, max_hint_wait_s: float = math.inf) -> None:
        """Wait until this slot may send its create: it has a place (again, after a 429), the reset hint
        has passed, and, while probing, no other create is in the air and it is first in line. Then its
        create counts as in the air until `succeeded`, `throttled` or `failed`. `HintTooLong` when waiting
        for the hint would take this slot's hint waits past `max_hint_wait_s` in all."""
        self._limit._ready(self, max_hint_wait_s)

    def succeeded(self) -> None:
        """The create made a prediction."""
        self._limit._succeeded(self)

    def throttled(self, retry_after_s: float) -> None:
        """The create got a 429 (nothing was made); the API's reset hint is `retry_after_s`."""
        self._limit._throttled(self, retry_after_s)

    def failed(self) -> None:
        """The create failed otherwise (its error says whether anything was made; the limit is unmoved)."""
        self._limit._failed(self)

    def release(self) -> None:
        """Give the place up (`generate` returned or raised); idempotent."""
        self._limit._release(self)

    # --- non-blocking, for tests with a fake clock ------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a place now if one is free for this slot (without getting in line)."""
        return self._limit._try_acquire(self)

    def try_ready(self) -> float:
        """`ready` without waiting or getting in line: 0 when the create may go now (it is then in the
        air), else the seconds until the hint passes, or inf while a place or the probe's answer is
        missing."""
        return self._limit._try_ready(self)
