"""Issue 19: equal clips at the default settings against the schedule bound, and how long a slot stays empty.

A slot is a prediction in flight: the cap of 5 bounds what is running at Replicate, so the best any
scheduler can do with N equal clips of L seconds is the bound ceil(N / 5) * L. The flow runs with the
settings a user gets: REPLICATE_POLL_INTERVAL, VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS and
VIDEO_GENERATOR_PREDICTION_LIMIT unset (1 s polls, the default retries, the default limit's name),
concurrency 5; outputs of ~9 MB (the scene image, benchmarks/scene.py). Twice: without the global limit on
the Prefect server (as `video-generator run` finds it: the limit is skipped), and with the limit that
`setup-prefect` creates (10 slots), which every prediction then takes and gives back.

Everything is read from the fake's own record (its create log and `FakeReplicateServer.timeline`), on this
process's clock:
- makespan: the run's first create to its final event (the last clip delivered, thumbnails included), as
  benchmarks/schedule.py reads it (`Timeline.core_makespan`); start-up (flow call to first create) is
  reported apart;
- turnaround: creates wait for a slot in turn, so the i-th prediction to end frees the slot the
  (5 + i)-th create fills; turnaround is the time between the two, at the fake.

The provider learns each model's latency from the account's recent predictions (one list read per run)
and from predictions that end, and polls often near the expected end (clipgen/polling.py). So each
configuration's first run is on a fresh fake (no history: its first wave is polled every second) and is
reported apart from the runs after it on the same fake, which has the earlier runs' predictions. The bare
asyncio baseline (benchmarks/baselines.py) polls every second too and holds its slot through the download.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.baselines import prediction_requests, run_semaphore
from benchmarks.common import (
    CONCURRENCY,
    TOKEN,
    check_delivered,
    environment,
    latency_faults,
    make_job,
    median,
    new_tag,
    options,
    run_flow,
    start_fake,
    timeline,
)
from benchmarks.report import Figure, figure, load_average
from benchmarks.scene import Scene, upload_scene
from clipgen.stores.local import LocalStore
from staging.fake_replicate.server import FakeReplicateServer

DEFAULT_POLL_INTERVAL_S = 1.0  # REPLICATE_POLL_INTERVAL's default, which the baseline uses too
PREDICTION_LIMIT = "replicate-predictions"  # VIDEO_GENERATOR_PREDICTION_LIMIT's default
PREDICTION_LIMIT_SIZE = 10  # `video-generator setup-prefect`'s default
TURNAROUND_TARGET_MS = 200 + 1000 * DEFAULT_POLL_INTERVAL_S  # the issue's: 200 ms plus one poll interval


@dataclass(frozen=True)
class SlotWorkload:
    clips: int
    latency_s: float  # each clip's, from its create to its output

    @property
    def waves(self) -> int:
        return math.ceil(self.clips / CONCURRENCY)

    @property
    def bound_s(self) -> float:
        """No schedule of these clips, 5 in flight at a time, ends sooner."""
        return self.waves * self.latency_s


@dataclass(frozen=True)
class SlotRun:
    """One run's figures, in seconds, from the fake's record and the job's events."""

    history: bool  # the fake had earlier predictions of the model when the run started
    makespan_s: float  # first create to the final event (a baseline: to its last download)
    startup_s: float | None  # flow call to first create (None for a baseline)
    last_clip_s: float | None  # first create to the last clip's progress event
    tail_s: float | None  # the last prediction's end at the fake to the final event
    turnarounds_s: list[float]
    max_in_flight: int
    load_average: float | None


def slot_turnarounds(ended: Sequence[float], created: Sequence[float], slots: int) -> list[float]:
    """Seconds from each slot's prediction ending to the next create in it. Creates wait for a slot in turn,
    so the i-th prediction to end (its slot free) lets the (slots + i)-th create go: the gap between the
    two is how long a slot the account pays for stayed empty. Needs more creates than slots."""
    return [create - end for end, create in zip(sorted(ended), sorted(created)[slots:], strict=False)]


def default_environment(fake: FakeReplicateServer, data_dir: Path) -> dict[str, str | None]:
    """What the flow reads: the fake, a data directory and the scene on loopback; the rest at defaults."""
    return {
        "REPLICATE_API_TOKEN": TOKEN,
        "REPLICATE_BASE_URL": fake.base_url,
        "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
        "VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES": "true",
        "REPLICATE_POLL_INTERVAL": None,
        "VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS": None,
        "VIDEO_GENERATOR_PREDICTION_LIMIT": None,
        "VIDEO_GENERATOR_CONCURRENCY": None,
    }


@contextmanager
def prediction_limit() -> Iterator[None]:
    """The global prediction limit as `setup-prefect` makes it, on the Prefect server, for the duration."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        limit = GlobalConcurrencyLimitCreate(name=PREDICTION_LIMIT, limit=PREDICTION_LIMIT_SIZE)
        client.create_global_concurrency_limit(limit)
    try:
        yield
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(PREDICTION_LIMIT)


def _events_of(fake: FakeReplicateServer, tag: str, clips: int) -> tuple[list[float], list[float], int]:
    """When the run's predictions were created and ended at the fake, and the most in flight."""
    events = [event for event in fake.timeline if tag in event.prompt]
    created = [event.at for event in events if event.kind == "created"]
    ended = [event.at for event in events if event.kind == "ended"]
    if len(created) != clips or len(ended) != clips:
        # A retried clip makes a second prediction: the slots' order no longer pairs ends with creates.
        raise RuntimeError(f"{len(created)} predictions created, {len(ended)} ended, for {clips} clips")
    return created, ended, max(event.in_flight for event in events)


def time_flow(fake: FakeReplicateServer, workload: SlotWorkload, data_dir: Path, scene: Scene) -> SlotRun:
    tag, load, history = new_tag(), load_average(), fake.creates > 0
    job = make_job(tag, workload.clips, scene=scene.reference)
    fake.add_fault(*latency_faults(tag, [workload.latency_s] * workload.clips))
    with environment(default_environment(fake, data_dir)):
        run = run_flow(job, options())
    check_delivered(run, workload.clips)
    steps = timeline(run, LocalStore(data_dir), job.job_id, fake)
    created, ended, most = _events_of(fake, tag, workload.clips)
    began = steps.first_create  # the first create's arrival at the fake, from the flow's call
    assert began is not None  # the timeline was read with the fake
    return SlotRun(
        history=history,
        makespan_s=steps.core_makespan,
        startup_s=began,
        last_clip_s=steps.last_clip - began,
        tail_s=steps.final_event - (max(ended) - run.called),
        turnarounds_s=slot_turnarounds(ended, created, CONCURRENCY),
        max_in_flight=most,
        load_average=load,
    )


def time_semaphore(
    fake: FakeReplicateServer, workload: SlotWorkload, work_dir: Path, scene: Scene
) -> SlotRun:
    tag, load = new_tag(), load_average()
    job = make_job(tag, workload.clips, scene=scene.reference)
    requests = prediction_requests(job, options(), scene.model_input, work_dir / "references")
    fake.add_fault(*latency_faults(tag, [workload.latency_s] * workload.clips))
    seconds = run_semaphore(fake.base_url, requests, work_dir / tag, CONCURRENCY, DEFAULT_POLL_INTERVAL_S)
    created, ended, most = _events_of(fake, tag, workload.clips)
    turnarounds = slot_turnarounds(ended, created, CONCURRENCY)
    return SlotRun(True, seconds, None, None, None, turnarounds, most, load)


@dataclass(frozen=True)
class LimitSetup:
    """How the global prediction limit is set up on the Prefect server for a series of runs, and what the
    figures shared by both setups (makespan / bound, turnaround) are named and say of it."""

    global_limit: bool  # the limit `setup-prefect` creates is on the server; else none, and the flow skips it
    prefix: str  # of the figures' keys
    makespan_title: str  # the setup as the makespan figures' titles name it
    turnaround_title: str  # the same for the turnaround figures' titles (before "fake with history")
    fresh_how: str  # how the fresh run was measured; {workload} stands for the workload's description
    history_how: str
    turnaround_how: str


NO_LIMIT = LimitSetup(
    global_limit=False,
    prefix="slots",
    makespan_title="equal clips, default settings",
    turnaround_title="",
    fresh_how="{workload}; first create to final event; no global limit on the server (as "
    "`video-generator run`); the fake has no history: the first wave is polled every 1 s",
    history_how="the same after earlier runs on the fake: polls follow the latency learned from them",
    turnaround_how="a prediction's end to the next create in its slot, both at the fake",
)
GLOBAL_LIMIT = LimitSetup(
    global_limit=True,
    prefix="slots_limit",
    makespan_title="with the global limit",
    turnaround_title="with the global limit, ",
    fresh_how=f"as above, with the limit `setup-prefect` creates ({PREDICTION_LIMIT_SIZE} slots) on the "
    "Prefect server",
    history_how="first create to final event",
    turnaround_how="includes giving back the Prefect slot and taking the next",
)


def measure_slots(root: Path, workload: SlotWorkload, repeat: int) -> list[Figure]:
    """Each way the limit can be set up, on a fake of its own: one run on the fresh fake, then `repeat`
    runs with history; the bare baseline `repeat` times beside the first."""
    figures: list[Figure] = []
    for setup in (NO_LIMIT, GLOBAL_LIMIT):
        with start_fake() as fake, prediction_limit() if setup.global_limit else nullcontext():
            scene = upload_scene(fake.base_url)
            data_dir = root / f"data-{setup.global_limit}"
            fresh = time_flow(fake, workload, data_dir, scene)
            warm: list[SlotRun] = []
            bare: list[SlotRun] = []
            for _ in range(repeat):
                warm.append(time_flow(fake, workload, data_dir, scene))
                if not setup.global_limit:
                    bare.append(time_semaphore(fake, workload, root / "downloads", scene))
        if setup.global_limit:
            figures += report_global_limit(workload, fresh, warm)
        else:
            figures += report(workload, fresh, warm) + report_baseline(workload, bare)
    return figures


def _how(workload: SlotWorkload) -> str:
    return (
        f"{workload.clips} clips of {workload.latency_s:g} s, default settings (1 s polls, concurrency "
        f"{CONCURRENCY}, default retries), scene image (~9 MB outputs); bound {workload.bound_s:g} s"
    )


def _makespan_figures(
    setup: LimitSetup, workload: SlotWorkload, fresh: SlotRun, warm: list[SlotRun]
) -> list[Figure]:
    """Makespan / bound, on the fresh fake and with history; the first carries every run's figures."""
    bound = workload.bound_s
    runs = {"fresh": asdict(fresh), "history": [asdict(run) for run in warm]}
    return [
        figure(
            f"{setup.prefix}_makespan_ratio_fresh",
            f"Makespan / bound, {setup.makespan_title}, fresh fake",
            "×",
            [fresh.makespan_s / bound],
            at_most=1.05,
            how=setup.fresh_how.format(workload=_how(workload)),
            detail={"bound_s": bound, "runs": runs},
        ),
        figure(
            f"{setup.prefix}_makespan_ratio",
            f"Makespan / bound, {setup.makespan_title}, fake with history",
            "×",
            [run.makespan_s / bound for run in warm],
            at_most=1.05,
            how=setup.history_how,
        ),
    ]


def _turnaround_figures(setup: LimitSetup, warm: list[SlotRun]) -> list[Figure]:
    """Turnaround per slot with history: the median, and the longest against the issue's target."""
    return [
        figure(
            f"{setup.prefix}_turnaround_median_ms",
            f"Turnaround per slot, median, {setup.turnaround_title}fake with history",
            "ms",
            [1000 * median(run.turnarounds_s) for run in warm],
            how=setup.turnaround_how,
        ),
        figure(
            f"{setup.prefix}_turnaround_max_ms",
            f"Turnaround per slot, longest, {setup.turnaround_title}fake with history",
            "ms",
            [1000 * max(run.turnarounds_s) for run in warm],
            at_most=TURNAROUND_TARGET_MS,
            how="target: 200 ms + one poll interval (1 s)",
        ),
    ]


def report(workload: SlotWorkload, fresh: SlotRun, warm: list[SlotRun]) -> list[Figure]:
    """Without the global limit on the server, as `video-generator run` (the issue's measurement) runs."""
    bound = workload.bound_s
    return [
        *_makespan_figures(NO_LIMIT, workload, fresh, warm),
        figure(
            "slots_makespan_s",
            "Makespan, equal clips, default settings, fake with history",
            "s",
            [run.makespan_s for run in warm],
            how=f"first create to final event; bound {bound:g} s",
        ),
        figure(
            "slots_lost_per_wave_s",
            "Lost per wave, default settings, fake with history",
            "s",
            [(run.makespan_s - bound) / workload.waves for run in warm],
            how=f"(makespan - bound) / {workload.waves} waves",
        ),
        figure(
            "slots_tail_s",
            "Last prediction's end to final event, fake with history",
            "s",
            [run.tail_s or 0.0 for run in warm],
            how="the last wave's download, probe, store, thumbnail and events: in the makespan, in no slot",
        ),
        figure(
            "slots_startup_s",
            "Start-up, equal clips, default settings",
            "s",
            [run.startup_s or 0.0 for run in (fresh, *warm)],
            how="flow call to the first create at the fake (the fresh run first); not in the makespan",
        ),
        *_turnaround_figures(NO_LIMIT, warm),
        figure(
            "slots_turnaround_max_fresh_ms",
            "Turnaround per slot, longest, fresh fake",
            "ms",
            [1000 * max(fresh.turnarounds_s)],
            at_most=TURNAROUND_TARGET_MS,
            how=f"median {1000 * median(fresh.turnarounds_s):.0f} ms",
        ),
    ]


def report_baseline(workload: SlotWorkload, bare: list[SlotRun]) -> list[Figure]:
    bound = workload.bound_s
    return [
        figure(
            "slots_semaphore_ratio",
            "Makespan / bound, bare asyncio.Semaphore(5), 1 s polls",
            "×",
            [run.makespan_s / bound for run in bare],
            how="the same clips: create, poll every 1 s, download, all in the slot; no store or Prefect",
            detail={"runs": [asdict(run) for run in bare]},
        ),
        figure(
            "slots_semaphore_lost_per_wave_s",
            "Lost per wave, bare asyncio.Semaphore(5), 1 s polls",
            "s",
            [(run.makespan_s - bound) / workload.waves for run in bare],
            how=f"(makespan - bound) / {workload.waves} waves",
        ),
        figure(
            "slots_semaphore_turnaround_median_ms",
            "Turnaround per slot, median, bare asyncio.Semaphore(5), 1 s polls",
            "ms",
            [1000 * median(run.turnarounds_s) for run in bare],
            how="the same reading of the fake's record",
        ),
    ]


def report_global_limit(workload: SlotWorkload, fresh: SlotRun, warm: list[SlotRun]) -> list[Figure]:
    """With the global limit that `setup-prefect` creates (10 slots): each prediction takes and gives back
    a slot of it on the Prefect server (here the test harness's, on SQLite)."""
    return _makespan_figures(GLOBAL_LIMIT, workload, fresh, warm) + _turnaround_figures(GLOBAL_LIMIT, warm)
