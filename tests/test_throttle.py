"""The adaptive limit on a run's predictions (clipgen.throttle), alone and inside the Replicate provider.

The limit's decisions are checked without threads against a fake clock; its waiting with real threads and
short hints; and the provider under a 429 storm on the fake Replicate API, through the real `replicate`
client, with five clip threads sharing one provider as a flow run's tasks do.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from replicate.client import Client

from clipgen.errors import HintTooLong, PermanentError, TransientError
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.paid_work import JobWork
from clipgen.planning import ClipPlan, plan_job
from clipgen.providers.base import Generation
from clipgen.providers.replicate import ReplicateProvider
from clipgen.stores.local import LocalStore
from clipgen.throttle import AdaptiveLimit, Slot
from staging.fake_replicate.server import CreateRequest, FakeReplicateServer, Fault
from tests.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def admitted(limit: AdaptiveLimit, count: int) -> list[Slot]:
    slots = [limit.slot() for _ in range(count)]
    assert all(slot.try_acquire() for slot in slots)
    return slots


def sent(slots: list[Slot]) -> list[Slot]:
    """Each slot's create goes out now."""
    assert [slot.try_ready() for slot in slots] == [0.0] * len(slots)
    return slots


# --- the decisions, with a fake clock -------------------------------------------------------------------


def test_unthrottled_everyone_gets_in_up_to_the_ceiling(clock: Clock) -> None:
    unlimited = AdaptiveLimit(clock=clock)
    sent(admitted(unlimited, 20))
    assert unlimited.stats().limit is None and unlimited.stats().in_use == 20

    capped = AdaptiveLimit(2, clock=clock)
    first, second = admitted(capped, 2)
    third = capped.slot()
    assert not third.try_acquire()
    first.release()
    assert third.try_acquire()
    second.release()
    second.release()  # idempotent
    assert capped.stats().in_use == 1


def test_a_429_halves_what_was_in_use_once_per_burst(clock: Clock) -> None:
    limit = AdaptiveLimit(clock=clock)
    slots = sent(admitted(limit, 8))
    slots[0].throttled(2.0)
    stats = limit.stats()
    assert (stats.limit, stats.drops, stats.probing, stats.wait_s) == (4, 1, True, 2.0)
    # The rest of the burst was sent before the drop: their 429s do not halve it again, and their
    # successes say nothing about the API now.
    slots[1].throttled(2.0)
    slots[2].succeeded()
    stats = limit.stats()
    assert (stats.limit, stats.drops, stats.probing, stats.rate_limited, stats.created) == (4, 1, True, 2, 1)
    # A throttled create made nothing: its slot gave its place up.
    assert stats.in_use == 6 and not slots[0].admitted


def test_each_refused_probe_halves_again_down_to_one(clock: Clock) -> None:
    limit = AdaptiveLimit(clock=clock)
    probe, *running = sent(admitted(limit, 8))
    probe.throttled(1.0)
    for slot in running:
        slot.succeeded()  # sent before the drop: the predictions run on, holding their places
    seen = [limit.stats().limit]
    for _ in range(3):
        clock.advance(1.0)
        while probe.try_ready() == math.inf:  # no place for the probe until enough predictions end
            running.pop().release()
        probe.throttled(1.0)
        seen.append(limit.stats().limit)
    # Each 429 of a create sent after the latest drop halves what was in use, never below one.
    assert seen == [4, 2, 1, 1]
    assert limit.stats().drops == 4


def test_the_reset_hint_is_shared_and_one_create_probes_after_it(clock: Clock) -> None:
    limit = AdaptiveLimit(clock=clock)
    first, *others = admitted(limit, 5)
    sent([first])
    first.throttled(3.0)
    # Slots that never sent anything wait for the same hint: nobody creates before it passes.
    assert [slot.try_ready() for slot in others] == [3.0] * 4
    clock.advance(1.0)
    assert others[0].try_ready() == 2.0
    clock.advance(2.0)
    # Then exactly one create goes; the others wait for its answer.
    assert others[0].try_ready() == 0.0
    assert [slot.try_ready() for slot in others[1:]] == [math.inf] * 3
    others[0].succeeded()
    # It succeeded: probing is over and the limit grew by one (2 → 3), so the slots holding places go.
    stats = limit.stats()
    assert (stats.limit, stats.probing) == (3, False)
    assert [slot.try_ready() for slot in others[1:]] == [0.0] * 3


def test_a_later_429_never_shortens_the_wait(clock: Clock) -> None:
    limit = AdaptiveLimit(clock=clock)
    a, b = sent(admitted(limit, 2))
    a.throttled(5.0)
    b.throttled(1.0)
    assert limit.stats().wait_s == 5.0


def test_successes_raise_the_limit_by_one_back_to_the_peak_or_the_ceiling(clock: Clock) -> None:
    limit = AdaptiveLimit(clock=clock)
    slots = sent(admitted(limit, 6))
    slots[0].throttled(1.0)  # 6 in use: 3
    for slot in slots[1:]:
        slot.release()
    clock.advance(1.0)
    limits = []
    for _ in range(3):
        slot = limit.slot()
        assert slot.try_acquire() and slot.try_ready() == 0.0
        slot.succeeded()
        limits.append(limit.stats().limit)
    # 3 → 4 → 5 → lifted: 6 was the most the run had in use.
    assert limits == [4, 5, None]

    capped = AdaptiveLimit(10, clock=clock)
    slots = sent(admitted(capped, 4))
    slots[0].throttled(1.0)  # 4 in use: 2
    for slot in slots[1:]:
        slot.release()
    clock.advance(1.0)
    limits = []
    for _ in range(8):
        slot = capped.slot()
        assert slot.try_acquire() and slot.try_ready() == 0.0
        slot.succeeded()
        slot.release()
        limits.append(capped.stats().limit)
    # With a ceiling, the limit climbs back to it (and is lifted there).
    assert limits == [3, 4, 5, 6, 7, 8, 9, None]


def test_a_failed_create_keeps_probing(clock: Clock) -> None:
    limit = AdaptiveLimit(clock=clock)
    a, b = sent(admitted(limit, 2))
    a.throttled(1.0)
    b.release()
    clock.advance(1.0)
    c = limit.slot()
    assert c.try_acquire() and c.try_ready() == 0.0
    c.failed()  # e.g. a 503: nothing learned about the rate limit
    assert limit.stats().probing and limit.stats().creating == 0
    assert c.try_ready() == 0.0


def test_a_hint_past_the_budget_is_refused_at_once(clock: Clock) -> None:
    limit = AdaptiveLimit(clock=clock)
    a, b = sent(admitted(limit, 2))
    a.throttled(61.0)
    b.release()
    with pytest.raises(HintTooLong) as caught:
        a.ready(60.0)
    assert caught.value.wait_s == 61.0
    a.release()
    stats = limit.stats()
    assert (stats.in_use, stats.waiting, stats.creating) == (0, 0, 0)


def test_misuse_is_refused(clock: Clock) -> None:
    limit = AdaptiveLimit(clock=clock)
    (slot,) = admitted(limit, 1)
    with pytest.raises(RuntimeError):
        slot.succeeded()
    sent([slot])
    with pytest.raises(RuntimeError):
        slot.try_ready()
    with pytest.raises(ValueError):
        AdaptiveLimit(0)


# --- waiting, with threads and real time ----------------------------------------------------------------


def test_places_go_first_come_first_served() -> None:
    limit = AdaptiveLimit(1)
    holder = limit.slot()
    holder.acquire()
    order: list[int] = []

    def clip(n: int) -> None:
        with limit.slot():
            order.append(n)
            time.sleep(0.01)

    threads = []
    for n in range(4):
        threads.append(threading.Thread(target=clip, args=(n,)))
        threads[-1].start()
        wait_until(lambda: limit.stats().waiting == len(threads))
    holder.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3]


def test_a_throttled_slot_gets_its_place_back_before_later_clips() -> None:
    limit = AdaptiveLimit()
    a, b = limit.slot(), limit.slot()
    a.acquire()
    b.acquire()
    a.ready()
    a.throttled(0.05)  # 2 in use: limit 1, and b still holds a place
    events: list[str] = []
    later = limit.slot()

    def retry_a() -> None:
        a.ready()
        events.append("a")

    def enter_later() -> None:
        later.acquire()
        events.append("later")

    retry = threading.Thread(target=retry_a)
    retry.start()
    newcomer = threading.Thread(target=enter_later)
    newcomer.start()
    wait_until(lambda: limit.stats().waiting == 2)
    time.sleep(0.1)  # the hint has passed; still no place
    assert events == []
    b.release()
    retry.join(5)
    assert events == ["a"]  # a's turn came first; the limit (1) keeps the newcomer out
    a.succeeded()  # 1 + 1 reaches the peak (2): lifted
    newcomer.join(5)
    assert events == ["a", "later"] and limit.stats().limit is None
    a.release()
    later.release()


def test_after_a_429_creates_wait_for_the_hint_then_go_one_at_a_time() -> None:
    limit = AdaptiveLimit()
    slots = [limit.slot() for _ in range(5)]
    for slot in slots:
        slot.acquire()
    slots[0].ready()
    started = time.monotonic()
    slots[0].throttled(0.2)
    gone: list[tuple[float, int]] = []
    lock = threading.Lock()

    def create(n: int) -> None:
        slots[n].ready()
        with lock:
            gone.append((time.monotonic() - started, n))
        time.sleep(0.05)  # the create's round trip
        slots[n].succeeded()

    threads = [threading.Thread(target=create, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    times = sorted(t for t, _ in gone)
    assert len(times) == 4 and times[0] >= 0.2
    # The first create after the hint went alone and the rest only after it was answered.
    assert times[1] - times[0] >= 0.05
    for slot in slots:
        slot.release()


def test_slots_retrying_under_a_storm_never_deadlock_and_every_clip_finishes() -> None:
    """40 clips on 5 threads against an API that refuses every create for a while, then half of them."""
    limit = AdaptiveLimit()
    started = time.monotonic()
    refused = 0
    lock = threading.Lock()
    limits_seen: list[int | None] = []

    def api_create(n: int) -> bool:
        nonlocal refused
        time.sleep(0.002)
        elapsed = time.monotonic() - started
        ok = elapsed > 0.3 and (elapsed > 0.6 or n % 2 == 0)
        with lock:
            refused += not ok
        return ok

    def clip(n: int) -> int:
        with limit.slot() as slot:
            while True:
                slot.ready()
                if api_create(n):
                    slot.succeeded()
                    break
                slot.throttled(0.02)
            limits_seen.append(limit.stats().limit)
            time.sleep(0.01)  # the prediction runs
        return n

    with ThreadPoolExecutor(5) as pool:
        done = list(pool.map(clip, range(40), timeout=30))
    assert done == list(range(40)) and refused > 0
    stats = limit.stats()
    assert (stats.in_use, stats.creating, stats.waiting, stats.limit) == (0, 0, 0, None)
    assert any(seen is not None for seen in limits_seen)


# --- the provider under a 429 storm on the fake Replicate API --------------------------------------------

CLIPS = 15
THREADS = 5
HINT_S = 1.0  # the fake's reset hints are whole seconds, as Replicate's are
STORM_S = 2.5
IN_THE_AIR_S = 0.25  # a create sent before its thread heard of a 429 arrives within this


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token="test-token", latency_s=0.3) as server:
        # Render the clip once (outputs are cached per shape), so predictions take their latency only.
        provider = replicate_provider(server)
        try:
            generate(provider, clip_plan(-1), tmp_path / "warm-up.mp4")
        finally:
            provider.close()
        server.reset()
        yield server


def replicate_provider(fake: FakeReplicateServer, **options: Any) -> ReplicateProvider:
    transport = httpx.HTTPTransport()
    client = Client(api_token="test-token", base_url=fake.base_url, transport=transport)
    return ReplicateProvider(client, poll_interval_s=0.02, api_transport=transport, **options)


def generate(provider: ReplicateProvider, plan: ClipPlan, dest: Path) -> Generation:
    """One clip attempt as the pipeline makes it: under the clip's lease, with the ledger of a local store."""
    work = JobWork(LocalStore(dest.parent / "data"), provider, owner="throttle-test").clip(plan)
    with work.hold():
        return provider.generate(plan, dest, work)


def clip_plan(n: int) -> ClipPlan:
    prompt = {"clip_index": 0, "prompt": f"storm {n} {uuid4()}", "duration": 4}
    job = ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": [prompt]})
    options = GenerationOptions(model="veo-3.1", aspect_ratio="16:9")
    return plan_job(job, options, lambda ref, field: Path(ref)).clips[0]


@dataclass
class Run:
    fault_added: float
    requests: list[CreateRequest]
    in_flight: list[tuple[float, int]]
    limits: list[int | None]
    files: list[Path]

    @property
    def refused(self) -> list[CreateRequest]:
        return [r for r in self.requests if r.status == 429]

    def created_after(self, moment: float) -> list[CreateRequest]:
        return [r for r in self.requests if r.status == 201 and r.arrived >= moment]

    def in_flight_between(self, start: float, end: float) -> list[int]:
        """Predictions in flight over [start, end): the count at `start` and every change until `end`."""
        before = [n for t, n in self.in_flight if t < start]
        return before[-1:] + [n for t, n in self.in_flight if start <= t < end]


def run_clips(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path, clips: int, fault: Fault
) -> Run:
    """`clips` clips on THREADS threads sharing one provider, as a flow run's tasks do; `fault` is added
    once the first THREADS predictions are running."""
    limits: list[int | None] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.005):
            limits.append(provider.throttle.stats().limit)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            futures = [
                pool.submit(generate, provider, clip_plan(n), tmp_path / f"clip-{n}.mp4")
                for n in range(clips)
            ]
            wait_until(lambda: fake.in_flight == THREADS, 30)
            fault_added = time.monotonic()
            fake.add_fault(fault)
            for future in futures:
                future.result(timeout=60)
    finally:
        sampling.set()
        sampler.join()
    files = sorted(tmp_path.glob("clip-*.mp4"))
    return Run(fault_added, fake.create_requests, fake.in_flight_series, limits, files)


def test_a_429_storm_costs_one_probe_per_hint_and_every_clip_lands(
    fake: FakeReplicateServer, tmp_path: Path
) -> None:
    """Every create is refused for STORM_S while all five threads come for their next clip."""
    provider = replicate_provider(fake)
    try:
        storm = Fault(kind="rate_limit", times=-1, seconds=HINT_S, lasts_s=STORM_S)
        run = run_clips(fake, provider, tmp_path, CLIPS, storm)
    finally:
        provider.close()
    storm_end = run.fault_added + STORM_S

    # (a) Every clip was made, by one prediction each.
    assert len(run.files) == CLIPS and all(path.stat().st_size > 0 for path in run.files)
    assert fake.creates == CLIPS and fake.rejected_creates == {429: len(run.refused)}

    # (b) The storm cost one 429 per thread that ran into it, then one probe per hint: not five threads
    # retrying every hint (14-15 429s without the limit).
    hints = math.ceil(STORM_S / HINT_S)
    assert len(run.refused) <= THREADS + hints, [r.arrived - run.fault_added for r in run.refused]
    assert len(run.requests) == CLIPS + len(run.refused)

    # (d) No create was sent within a 429's reset hint (except those already on their way when it came).
    for refusal in run.refused:
        early = [
            r.arrived - refusal.answered
            for r in run.requests
            if refusal.answered + IN_THE_AIR_S <= r.arrived < refusal.answered + HINT_S
        ]
        assert early == [], early

    # (c) The limit went down to one and was lifted again; after the storm the creates went one at a time
    # (each sent only once the one before was answered) until the limit was lifted, and five predictions
    # ran at once again.
    assert min(limit for limit in run.limits if limit is not None) == 1
    assert run.limits[-1] is None and provider.throttle.stats().limit is None
    ramp = run.created_after(storm_end)[:THREADS]
    assert all(later.arrived >= earlier.answered for earlier, later in itertools.pairwise(ramp))
    assert max(run.in_flight_between(storm_end, math.inf)) == THREADS


def test_one_429_lowers_the_predictions_running_until_creates_succeed_again(
    fake: FakeReplicateServer, tmp_path: Path
) -> None:
    """First-round predictions end one after another (0.3 s apart); the first create after them gets
    one 429. The clips behind it wait for running predictions to end until fewer than half of them run,
    and only then create; then the limit climbs back. Without the limit, the others create at once and
    four or five predictions run throughout."""
    for n in range(THREADS):
        fake.add_fault(Fault(kind="latency", match=f"storm {n} ", seconds=0.3 * (n + 1)))
    provider = replicate_provider(fake)
    try:
        run = run_clips(fake, provider, tmp_path, 3 * THREADS, Fault(kind="rate_limit", seconds=HINT_S))
    finally:
        provider.close()

    assert len(run.files) == 3 * THREADS and fake.creates == 3 * THREADS
    (refusal,) = run.refused
    # 5 in use when it came: the limit went to 2, and back (lifted) as creates succeeded.
    assert min(limit for limit in run.limits if limit is not None) == 2 and run.limits[-1] is None
    first_after = run.created_after(refusal.answered)[0]
    assert first_after.arrived >= refusal.answered + HINT_S
    # Between the 429 and the next create, the running predictions drained to one (below the limit)...
    drained = run.in_flight_between(refusal.answered, first_after.arrived)
    assert drained[-1] <= 1 and drained == sorted(drained, reverse=True), drained
    # ... and then five ran at once again.
    assert max(run.in_flight_between(first_after.arrived, math.inf)) == THREADS


def test_a_hint_past_the_budget_fails_the_attempt_at_once_and_frees_the_place(
    fake: FakeReplicateServer, tmp_path: Path
) -> None:
    provider = replicate_provider(fake, max_rate_limit_wait_s=0.5)
    try:
        fake.add_fault(Fault(kind="rate_limit", seconds=HINT_S))
        started = time.monotonic()
        with pytest.raises(TransientError, match=r"rate limited by Replicate: .*resets in ~1s") as caught:
            generate(provider, clip_plan(0), tmp_path / "clip.mp4")
        assert time.monotonic() - started < HINT_S
        assert caught.value.retry_after == pytest.approx(HINT_S, abs=0.1)
        assert len(fake.create_requests) == 1 and fake.creates == 0
        stats = provider.throttle.stats()
        assert (stats.in_use, stats.creating, stats.waiting, stats.limit) == (0, 0, 0, 1)
        # The task's retry comes after the hint (Prefect waits `retry_after`), and creates.
        time.sleep(caught.value.retry_after or 0)
        generate(provider, clip_plan(1), tmp_path / "clip.mp4")
        assert fake.creates == 1 and provider.throttle.stats().limit is None
    finally:
        provider.close()


def test_failures_free_the_place(fake: FakeReplicateServer, tmp_path: Path) -> None:
    provider = replicate_provider(fake)
    try:
        fake.add_fault(Fault(kind="server_error", status=503))
        with pytest.raises(TransientError, match="503"):
            generate(provider, clip_plan(0), tmp_path / "clip.mp4")
        fake.add_fault(Fault(kind="fail", error="flagged as sensitive (E005)"))
        with pytest.raises(PermanentError):
            generate(provider, clip_plan(1), tmp_path / "clip.mp4")
        stats = provider.throttle.stats()
        assert (stats.in_use, stats.creating, stats.waiting, stats.limit) == (0, 0, 0, None)
        assert (stats.created, stats.rate_limited) == (1, 0)
    finally:
        provider.close()


def test_a_storm_fault_ends_after_its_time(fake: FakeReplicateServer) -> None:
    fake.add_fault(Fault(kind="rate_limit", times=-1, lasts_s=0.3))
    (pending,) = fake.faults
    assert pending.lasts_s is not None and 0 < pending.lasts_s <= 0.3
    time.sleep(0.35)
    assert fake.faults == []
