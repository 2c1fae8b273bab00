"""Work done once per key by threads that may ask for the same key at the same moment."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Gate:
    """Where the callers of one key line up: one makes the value while the others wait on `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    callers: int = 0  # holding or waiting on `lock`; the gate goes when none is left


class OncePerKey(Generic[K, V]):
    """Values made at most once per key, for threads sharing them (the clips of one run).

    Callers asking for a key being made wait on the first caller's gate and take its value, instead of each
    doing the same work; a failure leaves the next caller to try. With `max_bytes` (and `size_of` to weigh
    a value), the least recently used values are dropped once the values kept weigh more, so a job of many
    distinct images keeps a bounded amount: a dropped value is made again if asked for again. A key's gate
    lives only while a caller holds or waits on it, so what is kept besides the values is bounded by the
    callers at the moment.
    """

    def __init__(self, max_bytes: int | None = None, size_of: Callable[[V], int] = lambda _: 0) -> None:
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._values: OrderedDict[K, V] = OrderedDict()
        self._gates: dict[K, _Gate] = {}
        self._kept_bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._values:
                return self._used(key)
            gate = self._gates.setdefault(key, _Gate())
            gate.callers += 1
        try:
            with gate.lock:
                with self._lock:
                    if key in self._values:  # made while this caller waited
                        return self._used(key)
                value = make()
                with self._lock:
                    self._keep(key, value)
                return value
        finally:
            with self._lock:
                gate.callers -= 1
                # Dropped only when nobody holds or waits on it: a caller that comes later makes a new
                # gate, and no one else is making the key by then.
                if not gate.callers:
                    del self._gates[key]

    def _used(self, key: K) -> V:
        self._values.move_to_end(key)
        return self._values[key]

    def _keep(self, key: K, value: V) -> None:
        self._values[key] = value
        self._kept_bytes += self._size_of(value)
        # The newest value stays even alone over the bound: the caller holds it anyway.
        while self._max_bytes is not None and self._kept_bytes > self._max_bytes and len(self._values) > 1:
            _, dropped = self._values.popitem(last=False)
            self._kept_bytes -= self._size_of(dropped)
