"""What every benchmark shares: the job, the environment the flow reads, the fake, a flow run, statistics.

The patterns are benchmarks/faults.py's (copied, not imported: that module is the fault matrix's). Every
prompt carries a tag for its run and its clip's index, so a `latency` fault gives one clip of one run a
controlled processing time and predictions can be told apart on the shared fake.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from clipgen import events
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.stores.base import ClipStore
from staging.fake_replicate.faults import Fault

if TYPE_CHECKING:  # the memory benchmark's child imports this module and must not count the fake's server
    from staging.fake_replicate.server import FakeReplicateServer

TOKEN = "benchmark-token"
# kling-v2.5-turbo makes 1920x1080 at 16:9 from text, in 5 or 10 s: the "10 s 1080p clip" of the issue.
MODEL = "kling-v2.5-turbo"
CLIP_SECONDS = 10.0
CONCURRENCY = 5
# Replicate's client polls every second by default; at 50 ms polling adds at most 50 ms per clip here, and
# the baselines poll at the same interval, so the comparison is like for like.
POLL_INTERVAL_S = 0.05
ENVIRONMENT = {
    "REPLICATE_POLL_INTERVAL": str(POLL_INTERVAL_S),
    "REPLICATE_API_TOKEN": TOKEN,
    "VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS": "0.1",
    # The global prediction limit takes two Prefect API calls per clip and is shared across runs; it is not
    # what is measured here (as in the fault matrix): take no slots.
    "VIDEO_GENERATOR_PREDICTION_LIMIT": "",
    # The jobs' scene image is served by the fake, on loopback (benchmarks/scene.py), as in local staging.
    "VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES": "true",
}


def clip_marker(tag: str, clip_index: int) -> str:
    """Text only clip `clip_index` of the run tagged `tag` has in its prompt (a fault's `match`)."""
    return f"{tag} clip {clip_index}:"


def new_tag() -> str:
    return uuid4().hex[:12]


def make_job(tag: str, clips: int, duration_s: float = CLIP_SECONDS, scene: str | None = None) -> ClipPrompts:
    """`clips` clips of `duration_s`, each prompt marked with `tag` and its index; `scene` is every clip's
    scene reference (none: text only)."""
    prompts = [
        {
            "clip_index": i,
            "prompt": f"{clip_marker(tag, i)} a paper boat drifts down a rainy street, shot {i}",
            "duration": duration_s,
            "scene_reference_url": scene,
        }
        for i in range(clips)
    ]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts})


def options(concurrency: int = CONCURRENCY, model: str = MODEL, **extra: Any) -> GenerationOptions:
    # min_success 1: a benchmark run measures time, not the success rule; a lost clip shows in the check.
    return GenerationOptions(model=model, concurrency=concurrency, min_success=1, **extra)


def latency_faults(tag: str, latencies_s: Sequence[float]) -> list[Fault]:
    """Clip i of the run tagged `tag` takes latencies_s[i] from its create to its output (its first
    prediction; a retry would take the fake's default)."""
    return [
        Fault(kind="latency", match=clip_marker(tag, i), seconds=seconds)
        for i, seconds in enumerate(latencies_s)
    ]


def start_fake(latency_s: float = 0.0) -> FakeReplicateServer:
    from staging.fake_replicate.server import FakeReplicateServer

    return FakeReplicateServer(token=TOKEN, latency_s=latency_s)


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set environment variables for the duration (the flow reads its settings from the environment); a
    None value unsets the variable, so the setting takes its default."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def flow_environment(fake: FakeReplicateServer, data_dir: Path) -> dict[str, str]:
    return {**ENVIRONMENT, "REPLICATE_BASE_URL": fake.base_url, "VIDEO_GENERATOR_DATA_DIR": str(data_dir)}


@dataclass(frozen=True)
class FlowRun:
    """One call of the real flow: its final state's name, its result, and when it was called and returned
    (time.monotonic(); `called_at` is the same moment on the wall clock, which the store's events use)."""

    state: str
    result: Any
    called: float
    returned: float
    called_at: datetime

    @property
    def seconds(self) -> float:
        return self.returned - self.called


def run_flow(
    job: ClipPrompts, generation: GenerationOptions, provider: str = "replicate", store: str = "local"
) -> FlowRun:
    """The flow `generate_video_clips`, called as a user's script would, timed from call to return."""
    from flows.video_generator import generate_video_clips

    called_at, called = datetime.now(UTC), time.monotonic()
    state = generate_video_clips(job, generation, provider=provider, store=store, return_state=True)
    returned = time.monotonic()
    result = state.result(raise_on_failure=False)
    return FlowRun(state.name or str(state.type), result, called, returned, called_at)


@dataclass(frozen=True)
class Timeline:
    """Where one flow run's time went, in seconds from its call, read from the job's events in the store
    (each written by the flow as the step happened) and from the fake's create log."""

    start_event: float  # video_generation_start: the plan is made, the backends are open
    last_clip: float  # the last video_generation_progress: every clip is stored
    last_thumbnail: float  # the last clip_thumbnail_ready (= last_clip when there are none)
    final_event: float  # video_generation_complete / _failed
    returned: float
    first_create: float | None = None  # the first prediction created, when a fake served them

    @property
    def thumbnail_tail(self) -> float:
        """How long the job waited for thumbnails after its last clip. Thumbnails run beside the clips, so
        only the last clip's thumbnail (and any still queued) can add to the makespan."""
        return max(0.0, self.last_thumbnail - self.last_clip)

    @property
    def shutdown(self) -> float:
        """From the final event to the flow's return: the clips table artifact, closing the backends, and
        Prefect finishing the run."""
        return self.returned - self.final_event

    @property
    def core_makespan(self) -> float:
        """The run without its per-run constants (start-up, shutdown): first create to final event (clips,
        thumbnails, events). Needs `first_create`: a timeline read with the fake."""
        assert self.first_create is not None
        return self.final_event - self.first_create


def timeline(
    run: FlowRun, store: ClipStore, job_id: UUID, fake: FakeReplicateServer | None = None
) -> Timeline:
    log = store.events(job_id)

    def last(*names: str) -> float:
        return max((e.created_at - run.called_at).total_seconds() for e in log if e.event in names)

    clips = last(events.PROGRESS)
    thumbnails = [e for e in log if e.event == events.THUMBNAIL_READY]
    return Timeline(
        start_event=last(events.START),
        last_clip=clips,
        last_thumbnail=last(events.THUMBNAIL_READY) if thumbnails else clips,
        final_event=last(*events.FINAL_EVENTS),
        returned=run.seconds,
        first_create=None if fake is None else first_create_after(fake, run.called) - run.called,
    )


def first_create_after(fake: FakeReplicateServer, since: float) -> float:
    """When the first create request answered with 201 after `since` arrived at the fake (monotonic)."""
    arrivals = [r.arrived for r in fake.create_requests if r.status == 201 and r.arrived >= since]
    if not arrivals:
        raise RuntimeError("no prediction was created")
    return min(arrivals)


def check_delivered(run: FlowRun, clips: int) -> None:
    """A timing means nothing if clips were lost: refuse to report it."""
    delivered = getattr(run.result, "successful_clips", None)
    if delivered != clips:
        raise RuntimeError(f"the flow delivered {delivered} of {clips} clips ({run.state}): {run.result!r}")


# --- statistics -----------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: a value that was actually observed."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
