"""clipgen.once.OncePerKey keeps what it made within its bound, and nothing else for keys no caller holds or
waits on: a long run of distinct references cannot grow it. Callers of one key at the same moment still make
it once (real threads).

A caller hashes its key as it comes in (to look it up), so a `Key` knows which threads have asked for it: a
`make` waits until the callers a test starts are inside `get`, with no sleeps, and whatever order the
threads run in, the test sees the same makes."""

from __future__ import annotations

import functools
import gc
import threading
import weakref
from collections.abc import Callable

from clipgen.once import OncePerKey

ARRIVAL_TIMEOUT_S = 30.0  # only so that a broken helper fails the test instead of hanging it


class Key:
    """A key that knows which threads have hashed it, that is, asked for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._callers: set[str] = set()
        self._arrived = threading.Condition()

    def __hash__(self) -> int:
        with self._arrived:
            self._callers.add(threading.current_thread().name)  # names: an ended thread's id is reused
            self._arrived.notify_all()
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.name == self.name

    def wait_for_callers(self, count: int) -> None:
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self._callers) >= count, ARRIVAL_TIMEOUT_S)
        assert arrived, f"{len(self._callers)} of {count} callers asked for {self.name}"


def one_at_a_time() -> OncePerKey[Key, str]:
    """Each value weighs 1 and the bound is 0: only the newest value is kept."""
    return OncePerKey(max_bytes=0, size_of=lambda _: 1)


def ask(kept: OncePerKey[Key, str], key: Key, make: Callable[[], str]) -> str | None:
    try:
        return kept.get(key, make)
    except RuntimeError:
        return None


def alive(refs: list[weakref.ref[Key]]) -> list[str]:
    gc.collect()
    return [key.name for ref in refs if (key := ref()) is not None]


def test_after_many_distinct_keys_only_the_kept_values_keys_remain() -> None:
    """Every key but the newest value's is let go, those whose make failed included."""
    kept = one_at_a_time()
    refs = []

    def make(key: Key) -> str:
        if key.name.endswith("1"):
            raise RuntimeError(f"could not make {key.name}")
        return key.name

    for number in range(200):
        key = Key(f"image-{number}")
        refs.append(weakref.ref(key))
        ask(kept, key, functools.partial(make, key))
    del key

    assert alive(refs) == ["image-199"]


def test_callers_of_one_key_at_once_make_it_once() -> None:
    kept = one_at_a_time()
    key, callers = Key("scene"), 6
    made: list[str] = []

    def make() -> str:
        made.append(threading.current_thread().name)
        key.wait_for_callers(callers)  # the others are in `get` before this one is made
        return f"scene by {made[-1]}"

    got = run_callers(callers, lambda: ask(kept, key, make))

    assert len(made) == 1
    assert got == [f"scene by {made[0]}"] * callers


def test_after_a_failed_make_the_next_caller_makes_it_and_a_late_caller_waits_for_that() -> None:
    """The failure ends the first maker's turn, not the gate: while the second caller makes the key, a caller
    that comes in only then waits for it instead of making it too."""
    kept = one_at_a_time()
    key, callers = Key("scene"), 4
    made: list[str] = []
    late: list[threading.Thread] = []

    def make() -> str:
        made.append(threading.current_thread().name)
        if len(made) == 1:
            key.wait_for_callers(callers)
            raise RuntimeError("the first make fails")
        if len(made) == 2:
            late.append(start_caller("late", lambda: results.append(ask(kept, key, make))))
            key.wait_for_callers(callers + 1)
        return f"scene by {threading.current_thread().name}"

    results: list[str | None] = []
    results += run_callers(callers, lambda: ask(kept, key, make))
    late[0].join()

    assert len(made) == 2, made
    assert sorted(results, key=str) == [None] + [f"scene by {made[1]}"] * callers


def test_a_key_asked_for_at_once_is_let_go_after_its_callers() -> None:
    kept = one_at_a_time()
    ref = ask_at_once(kept, Key("scene"), callers=4)
    kept.get(Key("the next scene"), lambda: "the next scene")

    assert ref() is None


def ask_at_once(kept: OncePerKey[Key, str], key: Key, callers: int) -> weakref.ref[Key]:
    """`callers` threads ask for `key` together; the key is left to the helper alone."""

    def make() -> str:
        key.wait_for_callers(callers)
        return key.name

    run_callers(callers, lambda: ask(kept, key, make))
    return weakref.ref(key)


def start_caller(name: str, call: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=call, name=name)
    thread.start()
    return thread


def run_callers(count: int, call: Callable[[], str | None]) -> list[str | None]:
    results: list[str | None] = []
    lock = threading.Lock()

    def one() -> None:
        result = call()
        with lock:
            results.append(result)

    for thread in [start_caller(f"caller-{n}", one) for n in range(count)]:
        thread.join()
    return results
