"""Work done once per key by threads that may ask for the same key at the same moment."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class OncePerKey(Generic[K, V]):
    """Values made at most once per key, for threads sharing them (the clips of one run).

    Callers asking for a key being made wait on the first caller's gate and take its value, instead of each
    doing the same work; a failure leaves the next caller to try. With `max_bytes` (and `size_of` to weigh
    a value), the least recently used values are dropped once the values kept weigh more, so a job of many
    distinct images keeps a bounded amount: a dropped value is made again if asked for again.
    """

    def __init__(self, max_bytes: int | None = None, size_of: Callable[[V], int] = lambda _: 0) -> None:
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._values: OrderedDict[K, V] = OrderedDict()
        self._gates: dict[K, threading.Lock] = {}
        self._kept_bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key]
            value = make()
            with self._lock:
                self._keep(key, value)
        return value

    def _keep(self, key: K, value: V) -> None:
        self._values[key] = value
        self._kept_bytes += self._size_of(value)
        # The newest value stays even alone over the bound: the caller holds it anyway.
        while self._max_bytes is not None and self._kept_bytes > self._max_bytes and len(self._values) > 1:
            _, dropped = self._values.popitem(last=False)
            self._kept_bytes -= self._size_of(dropped)
