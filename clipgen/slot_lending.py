"""Slots of a shared limit held by this process, lent from a clip done with its slot to the next one waiting.

Taking a slot of Prefect's global limit and giving it back are each a request that writes a lease on the
Prefect server: tens of milliseconds on an idle server, seconds on a loaded one, and the next create waited
for both. When a clip of this process is done with its slot, the slot is lent on to the next clip of the
process that asks, and that clip's create starts with neither request.

Each slot is held by a keeper thread of its own (`hold` takes it, renews its lease while it is held and
gives it back when left), so a slot outlives the clip that took it. Bounds:
- a slot is lent at most LENDS_PER_HOLD times, then given back, so that other processes, which can only ask
  the server, get their turn at a full limit;
- a slot is given back once no clip of the process waits for one and none has asked within IDLE_S, so none
  is held for long for nothing. (The run's next clip asks a moment after the last one is done: it waits for
  the run's own slot first, which that one gives back just before.) While a clip waits, the slot is kept for
  it even when its own request to the server is slow to answer (seconds on a loaded server): giving the slot
  back then would only make that request take it again. When the process exits, its idle slots are given
  back (`close`), so a run that ends leaves no lease on the server.
Clips of the process ask in order (clipgen/slot_queue.py), whether the slot comes lent or from the server.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from clipgen.slot_queue import SlotQueue

LENDS_PER_HOLD = 4  # a slot taken from the server serves at most 5 predictions before it is given back
IDLE_S = 0.5  # a slot that no clip takes within this is given back

logger = logging.getLogger(__name__)


class SlotRefused(Exception):
    """The shared limit is full: ask again later."""


@dataclass(eq=False)
class _Held:
    """One slot, held by its keeper thread."""

    lends: int = 0
    busy: bool = True  # a clip is using it
    done: bool = False  # its keeper is to give it back
    given_back: threading.Event = field(default_factory=threading.Event)


class SlotLender:
    def __init__(self, hold: Callable[[], AbstractContextManager[None]], poll_s: float) -> None:
        # Takes one slot from the server on entry (or raises SlotRefused) and gives it back on exit.
        self._hold = hold
        self._queue = SlotQueue(poll_s)
        self._cond = threading.Condition()
        self._idle: list[_Held] = []
        self._waiting = 0  # clips of this process asking for a slot

    @contextmanager
    def slot(self) -> Iterator[None]:
        """One slot while the block runs: lent by a clip done with it, else taken from the server."""
        with self._cond:
            self._waiting += 1
        try:
            with self._queue.turn():
                held = self._next_slot()
        finally:
            with self._cond:
                self._waiting -= 1
                self._cond.notify_all()
        try:
            yield
        finally:
            self._done_with(held)

    def _next_slot(self) -> _Held:
        while True:
            held = self._borrowed() or self._taken()
            if held is not None:
                return held
            self._queue.wait()

    def _borrowed(self) -> _Held | None:
        with self._cond:
            if not self._idle:
                return None
            held = self._idle.pop()
            held.busy = True
            held.lends += 1
            self._cond.notify_all()
            return held

    def _taken(self) -> _Held | None:
        """A slot from the server, held by a new keeper thread; None when the limit is full."""
        held = _Held()
        outcome: Future[bool] = Future()
        # The keeper sees the caller's context (Prefect's settings, such as which server, live in it).
        keeper = contextvars.copy_context()
        threading.Thread(
            target=keeper.run, args=(self._keep, held, outcome), name="shared-slot-keeper", daemon=True
        ).start()
        return held if outcome.result() else None

    def _keep(self, held: _Held, outcome: Future[bool]) -> None:
        try:
            with self._hold():
                outcome.set_result(True)
                self._serve(held)
        except SlotRefused:
            outcome.set_result(False)
        except Exception as exc:  # noqa: BLE001 - the thread's end: the error goes to whoever waits on it
            if not outcome.done():
                outcome.set_exception(exc)
            else:  # giving the slot back failed: the server frees it when its lease runs out
                logger.warning("could not give a slot of the shared limit back: %s", exc)
        finally:
            held.given_back.set()

    def _serve(self, held: _Held) -> None:
        """Until the slot is to be given back: while lent out, or idle while clips wait or within IDLE_S."""
        with self._cond:
            while not held.done:
                if held.busy:
                    self._cond.wait()
                    continue
                taken = self._cond.wait_for(lambda: held.busy or held.done, timeout=IDLE_S)
                if not taken and not self._waiting:
                    self._idle.remove(held)  # no clip came for it, or the one it was kept for stopped waiting
                    held.done = True

    def _done_with(self, held: _Held) -> None:
        with self._cond:
            held.busy = False
            if held.lends < LENDS_PER_HOLD:
                self._idle.append(held)  # for the clip whose turn it is, or the next to come within IDLE_S
            else:
                held.done = True
            self._cond.notify_all()
        if held.done:
            held.given_back.wait()
        self._queue.freed()  # the clip whose turn it is takes the lent slot, or asks the server for one

    def close(self, timeout_s: float = 5.0) -> None:
        """Give back every slot no clip is using, now (at exit: a keeper is a daemon thread)."""
        with self._cond:
            idle, self._idle = self._idle, []
            for held in idle:
                held.done = True
            self._cond.notify_all()
        for held in idle:
            held.given_back.wait(timeout_s)
