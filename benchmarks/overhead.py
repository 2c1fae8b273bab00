"""What the flow costs per clip when the provider costs nothing, and what a thumbnail costs.

`InstantProvider` hands over a finished 10 s 1080p file at once (a copy of the fake's real output of a
detailed scene, about 9 MB), so a flow run's time is orchestration only: the Prefect task run and its
state changes, the ledger and clip records, the probe, the store's copy, the progress event, the
thumbnail task. It is a provider like any user's, registered under its own name
(`clipgen.backends.register_provider`); nothing of ours is patched.
The per-clip cost is the marginal one: (clip phase of N clips - clip phase of 1 clip) / (N - 1), where the
clip phase runs from the job's start event to its last clip's progress event. That leaves out the per-run
costs (start-up, final event, artifacts, Prefect ending the run) that do not grow with the job.

`step_costs` times the clip's own steps alone, on the same store and file, to say where the time goes.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from benchmarks.common import (
    CONCURRENCY,
    check_delivered,
    environment,
    flow_environment,
    make_job,
    median,
    new_tag,
    options,
    run_flow,
    timeline,
)
from benchmarks.report import Figure, figure
from clipgen.backends import register_provider
from clipgen.media import make_thumbnail, probe
from clipgen.planning import ClipPlan
from clipgen.providers.base import Generation, PaidWork, RemoteStatus
from clipgen.stores.base import VIDEO_BUCKET, ClipRecord, PredictionRecord
from clipgen.stores.local import LocalStore
from staging.fake_replicate.server import FakeReplicateServer

INSTANT = "benchmark-instant"


class InstantProvider:
    """Delivers a copy of `source` at once: a provider whose generation takes no time."""

    name = INSTANT
    paid = False  # nothing to pay for, so no slot of the global prediction limit either

    def __init__(self, source: Path) -> None:
        self.source = source

    def generate(self, plan: ClipPlan, dest: Path, work: PaidWork) -> Generation:
        # Written next to `dest` and renamed, as the protocol asks (never a half-written file at `dest`).
        # `work` is about paid requests, which this provider never makes.
        part = dest.with_name(f".{dest.name}.part")
        shutil.copyfile(self.source, part)
        os.replace(part, dest)
        return Generation(metadata={"provider": self.name})

    def cancel(self, prediction_id: str) -> RemoteStatus | None:
        return None


def register_instant(source: Path) -> None:
    register_provider(INSTANT, lambda settings: InstantProvider(source))


@dataclass(frozen=True)
class ClipPhase:
    wall_s: float  # from the job's start event to its last clip's progress event
    cpu_s: float  # CPU time of this process (every thread) over the whole flow run


def _clip_phase(fake: FakeReplicateServer, data_dir: Path, clips: int, concurrency: int) -> ClipPhase:
    """One flow run of `clips` clips with the instant provider."""
    job = make_job(new_tag(), clips)
    with environment(flow_environment(fake, data_dir)):
        cpu_before = time.process_time()
        run = run_flow(job, options(concurrency), provider=INSTANT)
        cpu = time.process_time() - cpu_before
    check_delivered(run, clips)
    steps = timeline(run, LocalStore(data_dir), job.job_id)
    return ClipPhase(steps.last_clip - steps.start_event, cpu)


def per_clip_overhead(fake: FakeReplicateServer, data_dir: Path, clips: int, concurrency: int) -> ClipPhase:
    """What each clip adds: (a run of `clips` - a run of 1) / (clips - 1), in wall time and in CPU time."""
    one = _clip_phase(fake, data_dir, 1, concurrency)
    many = _clip_phase(fake, data_dir, clips, concurrency)
    return ClipPhase((many.wall_s - one.wall_s) / (clips - 1), (many.cpu_s - one.cpu_s) / (clips - 1))


def measure_overhead(
    fake: FakeReplicateServer, root: Path, reference_clip: Path, clips: int, repeat: int
) -> list[Figure]:
    register_instant(reference_clip)
    data_dir = root / "data"
    _clip_phase(fake, data_dir, 1, CONCURRENCY)  # warm-up: the provider's first use, first probe
    at_five = [per_clip_overhead(fake, data_dir, clips, CONCURRENCY) for _ in range(repeat)]
    at_one = [per_clip_overhead(fake, data_dir, clips, 1) for _ in range(repeat)]
    how = f"instant provider, 10 s 1080p clips; (clip phase of {clips} clips - of 1 clip) / {clips - 1}"
    return [
        figure(
            "overhead_per_clip_ms",
            f"Orchestration overhead per clip, concurrency {CONCURRENCY}",
            "ms",
            [phase.wall_s * 1000 for phase in at_five],
            at_most=30.0,
            how=how,
            detail={"steps_ms": step_costs(root / "steps", reference_clip, repeat=max(5, repeat))},
        ),
        figure(
            "overhead_per_clip_serial_ms",
            "Orchestration overhead per clip, concurrency 1",
            "ms",
            [phase.wall_s * 1000 for phase in at_one],
            how=f"{how}; one clip at a time: the latency each clip adds",
        ),
        figure(
            "overhead_cpu_per_clip_ms",
            f"CPU time per clip in the flow's process, concurrency {CONCURRENCY}",
            "ms",
            [phase.cpu_s * 1000 for phase in at_five],
            how=f"the same runs: (process CPU time, every thread, of {clips} clips - of 1 clip) / "
            f"{clips - 1}; the Prefect server is another process. Less sensitive to other load than the "
            "wall time",
        ),
    ]


def _thumbnail_ms(clip: Path, dest: Path, calls: int) -> float:
    samples = []
    for _ in range(calls):
        began = time.perf_counter()
        make_thumbnail(clip, dest)
        samples.append(time.perf_counter() - began)
    return median(samples) * 1000


def measure_thumbnails(detailed: Path, plain: Path, root: Path, calls: int, repeat: int) -> list[Figure]:
    """`make_thumbnail` (open, decode the first frame, scale, encode a JPEG) on two 10 s 1080p outputs of
    the fake: one animating a detailed scene (a model's bitrate), one of its near-empty text frames."""
    dest = root / "thumbnail.jpg"
    for clip in (detailed, plain):
        make_thumbnail(clip, dest)  # warm-up: codec tables, first file read
    how = f"clipgen.media.make_thumbnail, median of {calls} calls per run"
    rate = detailed.stat().st_size * 8 / probe(detailed).duration / 1e6
    return [
        figure(
            "thumbnail_ms",
            f"Thumbnail of a 10 s 1080p clip ({rate:.0f} Mbit/s)",
            "ms",
            [_thumbnail_ms(detailed, dest, calls) for _ in range(repeat)],
            at_most=50.0,
            how=f"{how}; animated detailed scene, {detailed.stat().st_size / 1e6:.1f} MB",
            detail={"clip_bytes": detailed.stat().st_size, "megabits_per_second": rate},
        ),
        figure(
            "thumbnail_plain_ms",
            "Thumbnail of the fake's text-only 10 s 1080p clip",
            "ms",
            [_thumbnail_ms(plain, dest, calls) for _ in range(repeat)],
            how=f"{how}; a still frame, {plain.stat().st_size / 1e3:.0f} KB",
            detail={"clip_bytes": plain.stat().st_size},
        ),
    ]


def step_costs(root: Path, reference_clip: Path, repeat: int) -> dict[str, float]:
    """Median milliseconds of each store and media step a clip takes, alone, on a fresh local store.

    A clip from Replicate makes about: 3 clip-row writes, 2 lease writes (take, release), 4 ledger writes
    (intend, resolve, succeeded, delivered), 2 ledger reads, 2 clip-row reads, a probe, a video upload, a
    progress event; its thumbnail a JPEG, an upload, a row and an event. With the instant provider (not
    paid) there are no ledger writes.
    """
    store = LocalStore(root / "data")
    job_id = uuid4()
    # As the flow has it: the clip in the job's work directory, inside the store's data directory.
    work_clip = root / "data" / "work" / str(job_id) / "clip_0.mp4"
    work_clip.parent.mkdir(parents=True)
    shutil.copyfile(reference_clip, work_clip)
    record = ClipRecord(job_id=job_id, clip_index=0, status="running", model="kling-v2.5-turbo")
    prediction = PredictionRecord(
        prediction_id="p0", job_id=job_id, clip_index=0, provider="replicate", model="m", plan_fingerprint="f"
    )
    steps: dict[str, Callable[[], object]] = {
        "probe": lambda: probe(work_clip),
        "make_thumbnail": lambda: make_thumbnail(work_clip, work_clip.with_suffix(".jpg")),
        "put_object (video from the work directory: a link)": lambda: store.put_object(
            VIDEO_BUCKET, f"{job_id}/c.mp4", work_clip, "video/mp4"
        ),
        "put_object (video from elsewhere: a copy, fsync)": lambda: store.put_object(
            VIDEO_BUCKET, f"{job_id}/d.mp4", reference_clip, "video/mp4"
        ),
        "upsert_clip": lambda: store.upsert_clip(record),
        "record_prediction": lambda: store.record_prediction(prediction),
        "append_event": lambda: store.append_event(job_id, "benchmark", {"clip_index": 0}),
        "clip_records (read)": lambda: store.clip_records(job_id),
        "predictions (read)": lambda: store.predictions(job_id),
    }
    costs = {}
    for name, step in steps.items():
        step()  # warm-up: the schema, the first file
        samples = []
        for _ in range(repeat):
            began = time.perf_counter()
            step()
            samples.append(time.perf_counter() - began)
        costs[name] = round(median(samples) * 1000, 2)
    return costs
