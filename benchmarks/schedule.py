"""Makespan against the schedule bound, the speed-up over sequential, start-up, and the thumbnails' tail.

Each clip gets a controlled processing time on the fake (a `latency` fault on its prompt), so the best any
scheduler could do is known: with `slots` at a time, no schedule beats max(longest clip, sum / slots).
The flow is measured against that bound and beside two baselines over the same fake: sequential, and a
bare `asyncio.Semaphore(slots)`. `list_schedule` is what a zero-overhead first-come, first-served pool
(the flow's thread pool, or the semaphore) would reach with clips taken in the job's order; the gap
between it and the bound is the order's, not the code's.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.baselines import prediction_requests, run_semaphore, run_sequential
from benchmarks.common import (
    CONCURRENCY,
    Timeline,
    check_delivered,
    environment,
    first_create_after,
    flow_environment,
    latency_faults,
    make_job,
    median,
    new_tag,
    options,
    run_flow,
    timeline,
)
from benchmarks.report import Figure, figure
from benchmarks.scene import Scene
from clipgen.stores.local import LocalStore
from staging.fake_replicate.server import FakeReplicateServer


@dataclass(frozen=True)
class Workload:
    clips: int
    median_latency_s: float  # of the log-normal spread
    sigma: float  # of the log-normal's underlying normal
    seed: int
    equal_latency_s: float  # each clip of the equal-clips run

    def spread(self) -> list[float]:
        return lognormal_latencies(self.clips, self.median_latency_s, self.sigma, self.seed)


def lognormal_latencies(clips: int, median_s: float, sigma: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [round(median_s * math.exp(rng.gauss(0.0, sigma)), 3) for _ in range(clips)]


def schedule_bound(latencies: Sequence[float], slots: int) -> float:
    """No schedule of these clips on `slots` slots ends sooner."""
    return max(max(latencies), sum(latencies) / slots)


def list_schedule(latencies: Sequence[float], slots: int) -> float:
    """The makespan of a zero-overhead pool that starts each clip, in order, in the first free slot."""
    free_at = [0.0] * slots
    for latency in latencies:
        heapq.heappush(free_at, heapq.heappop(free_at) + latency)
    return max(free_at)


def time_flow(
    fake: FakeReplicateServer, latencies: Sequence[float], data_dir: Path, scene: Scene
) -> Timeline:
    tag = new_tag()
    job = make_job(tag, len(latencies), scene=scene.reference)
    fake.add_fault(*latency_faults(tag, latencies))
    with environment(flow_environment(fake, data_dir)):
        run = run_flow(job, options())
    check_delivered(run, len(latencies))
    return timeline(run, LocalStore(data_dir), job.job_id, fake)


def time_baseline(
    kind: str, fake: FakeReplicateServer, latencies: Sequence[float], work_dir: Path, scene: Scene
) -> float:
    tag = new_tag()
    job = make_job(tag, len(latencies), scene=scene.reference)
    requests = prediction_requests(job, options(), scene.model_input, work_dir / "references")
    fake.add_fault(*latency_faults(tag, latencies))
    if kind == "sequential":
        return run_sequential(fake.base_url, requests, work_dir / tag)
    return run_semaphore(fake.base_url, requests, work_dir / tag, CONCURRENCY)


def warm_up(fake: FakeReplicateServer, data_dir: Path, scene: Scene) -> None:
    """One unmeasured run with the scene: the fake renders the provider's copy of the image once, here."""
    tag = new_tag()
    fake.add_fault(*latency_faults(tag, [0.0]))
    with environment(flow_environment(fake, data_dir)):
        run = run_flow(make_job(tag, 1, scene=scene.reference), options())
    check_delivered(run, 1)


def cold_start(fake: FakeReplicateServer, data_dir: Path) -> list[Figure]:
    """The first flow run in a fresh process: one text-only clip that takes no time on the fake. Includes
    importing the flow module, Prefect's client and the first API round trips; later runs skip most of it."""
    tag = new_tag()
    fake.add_fault(*latency_faults(tag, [0.0]))
    with environment(flow_environment(fake, data_dir)):
        run = run_flow(make_job(tag, 1), options())
    check_delivered(run, 1)
    startup = first_create_after(fake, run.called) - run.called
    how = "1 text-only clip of ~0 s, the process's first flow run: call to first create; the whole run"
    return [
        figure("startup_cold_s", "Start-up, first flow run in a process", "s", [startup], how=how),
        figure("makespan_cold_1clip_s", "Makespan, 1-clip job, first run", "s", [run.seconds], how=how),
    ]


def measure_spread(
    fake: FakeReplicateServer, root: Path, workload: Workload, repeat: int, scene: Scene
) -> list[Figure]:
    """Makespan / bound for clips of spread latencies, for the flow and both baselines."""
    latencies = workload.spread()
    bound = schedule_bound(latencies, CONCURRENCY)
    flows: list[Timeline] = []
    sequential: list[float] = []
    semaphore: list[float] = []
    for _ in range(repeat):
        flows.append(time_flow(fake, latencies, root / "data", scene))
        semaphore.append(time_baseline("semaphore", fake, latencies, root / "downloads", scene))
        sequential.append(time_baseline("sequential", fake, latencies, root / "downloads", scene))
    setup = (
        f"{workload.clips} clips, log-normal latencies (median {workload.median_latency_s:g} s, "
        f"sigma {workload.sigma:g}, seed {workload.seed}), {CONCURRENCY} at a time; bound {bound:.2f} s"
    )
    detail = {
        "latencies_s": latencies,
        "bound_s": bound,
        "sum_s": sum(latencies),
        "longest_s": max(latencies),
    }
    return [
        figure(
            "makespan_bound_ratio",
            "Makespan / bound, flow (raw)",
            "×",
            [run.returned / bound for run in flows],
            how=f"{setup}; flow call to return",
            detail=detail | {"timelines": [asdict(run) for run in flows]},
        ),
        figure(
            "makespan_bound_ratio_after_startup",
            "Makespan / bound, flow, start-up subtracted",
            "×",
            [(run.returned - (run.first_create or 0.0)) / bound for run in flows],
            at_most=1.05,
            how="(makespan - start-up) / bound; start-up = call to first create",
        ),
        figure(
            "makespan_bound_ratio_core",
            "Makespan / bound, flow, start-up and shutdown subtracted",
            "×",
            [run.core_makespan / bound for run in flows],
            how="first create to the final event / bound: what the flow's own clip handling adds",
        ),
        figure(
            "startup_s",
            "Start-up per run (warm process)",
            "s",
            [run.first_create or 0.0 for run in flows],
            how="flow call to its first create arriving at the fake",
        ),
        figure(
            "shutdown_s",
            "Shutdown per run",
            "s",
            [run.shutdown for run in flows],
            how="final event to the flow's return (table artifact, closing, Prefect ending the run)",
        ),
        figure(
            "list_schedule_bound_ratio",
            "Makespan / bound, zero-overhead pool in job order",
            "×",
            [list_schedule(latencies, CONCURRENCY) / bound],
            how="computed: what any first-come first-served pool reaches at best with this order",
        ),
        figure(
            "semaphore_bound_ratio",
            "Makespan / bound, bare asyncio.Semaphore(5) baseline",
            "×",
            [seconds / bound for seconds in semaphore],
            how="create, poll, download over HTTP; no store, probe or Prefect",
        ),
        figure(
            "flow_per_semaphore",
            "Makespan, flow / bare asyncio.Semaphore(5) baseline",
            "×",
            [run.returned / bare for run, bare in zip(flows, semaphore, strict=True)],
            how="the same clips, same fake, same poll interval: what Prefect, the store, probes, "
            "thumbnails and events add, start-up included",
        ),
        figure(
            "sequential_bound_ratio",
            "Makespan / bound, sequential baseline",
            "×",
            [seconds / bound for seconds in sequential],
            how="the same predictions one at a time",
        ),
        figure(
            "thumbnail_makespan_share_pct",
            "Thumbnails' share of the makespan",
            "%",
            [100 * run.thumbnail_tail / run.returned for run in flows],
            at_most=2.0,
            how="last clip's progress event to last thumbnail event, / makespan",
            detail={"tails_s": [run.thumbnail_tail for run in flows]},
        ),
    ]


def measure_equal(
    fake: FakeReplicateServer, root: Path, workload: Workload, repeat: int, scene: Scene
) -> list[Figure]:
    """Speed-up of the flow over the sequential baseline, for clips that all take the same time."""
    latencies = [workload.equal_latency_s] * workload.clips
    speedups: list[float] = []
    core: list[float] = []
    semaphore: list[float] = []
    flows: list[Timeline] = []
    for _ in range(repeat):
        flow = time_flow(fake, latencies, root / "data", scene)
        flows.append(flow)
        sequential = time_baseline("sequential", fake, latencies, root / "downloads", scene)
        bare = time_baseline("semaphore", fake, latencies, root / "downloads", scene)
        speedups.append(sequential / flow.returned)
        core.append(sequential / flow.core_makespan)
        semaphore.append(sequential / bare)
    setup = f"{workload.clips} clips of {workload.equal_latency_s:g} s each, {CONCURRENCY} at a time"
    ideal = workload.clips / math.ceil(workload.clips / CONCURRENCY)
    saved = 100 * (1 - 1 / median(speedups))
    return [
        figure(
            "speedup_equal",
            "Speed-up over sequential, equal clips",
            "×",
            speedups,
            at_least=4.7,
            how=f"{setup}; sequential baseline / flow makespan (at most {ideal:.2f}×); "
            f"{saved:.0f} % of the sequential time saved",
            detail={"timelines": [asdict(flow) for flow in flows]},
        ),
        figure(
            "speedup_equal_core",
            "Speed-up over sequential, equal clips, start-up and shutdown subtracted",
            "×",
            core,
            how="sequential baseline / (first create to final event)",
        ),
        figure(
            "speedup_equal_semaphore",
            "Speed-up over sequential, bare asyncio.Semaphore(5) baseline",
            "×",
            semaphore,
            how="what the bare loop reaches on the same fake",
        ),
    ]
