"""Fleet utilisation (issue 19): a backlog of queued jobs on several process workers against one prediction
limit. How much of the limit is busy, and how long any job waits for its first prediction.

    .venv/bin/python benchmarks/fleet.py [--jobs 40] [--clips 6] [--latency-scale 1] [--workers 2]
                                         [--limit 20] [--seed 19] [--clip-timeout S]
                                         [--json out/fleet.json] [--logs out/fleet-logs]

What runs, as an operator would run it (tests/prefect_stack.py's stack): `prefect server start` in a
PREFECT_HOME of its own, `video-generator setup-prefect --prediction-limit N` (a limit of its own),
`prefect deploy --all`, and `--workers` process workers (`prefect worker start --pool ... --type process`),
each on a work queue of its own and sharing one VIDEO_GENERATOR_DATA_DIR (the local store: one queue). The
fake Replicate API runs in this process; each clip gets a processing time on it (a `latency` fault on its
prompt), log-normal around the median, seeded. Every job is queued first, then one run of the queue
deployment is started per worker. REPLICATE_POLL_INTERVAL and the jobs-at-once setting are the defaults.

Figures (read from the fake's own record and the store, not from our code):
- utilisation: the integral of predictions in flight at the fake, from the first create to the last
  prediction's end, over limit x that time. 1.0 is every slot busy the whole time.
- utilisation while the backlog lasts (first create to last create), where the target is judged: after the
  last create no scheduler has a choice left, and a finite backlog's tail is its last clips' latencies.
- what a zero-overhead first-come, first-served pool reaches with the same clips in submission order
  (benchmarks/schedule.py's `list_schedule`): the whole run's utilisation no scheduler that cannot know a
  clip's latency in advance is sure to beat, tail included; and ours as a share of it.
- longest wait: a job's submission to the create of its first prediction, the longest of all jobs.
- jobs and clips completed, wall time (first submission to the last job's end), the most predictions in
  flight (never above the limit).
- predictions created, by status, and every clip that got more than one: its predictions as the fake saw
  them, its ledger rows and why each later one was made (the ledger's reason for ending the one before).
  A clip slower than its deadline (the model's, 120 s for kling-v2.5-turbo, or --clip-timeout) is canceled
  there and retried, as for any user; the latency fault fires once, so the retry ends at the fake's default
  latency: one extra, canceled, prediction for that clip.
The stack's logs (server, workers, with the flow runs' output) are copied to --logs.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import TOKEN, clip_marker, latency_faults, make_job, new_tag, options
from benchmarks.report import describe_machine, load_average, write_json
from benchmarks.schedule import list_schedule
from clipgen.stores.local import LocalStore
from staging.fake_replicate.server import FakeReplicateServer

QUEUE = "process-video-job-queue/video-generator-queue"
MEDIAN_LATENCY_S = 20.0  # log-normal: most clips 10-40 s, a few a minute (real models: one to several)
SIGMA = 0.5
TARGET_UTILISATION = 0.9


@dataclass(frozen=True)
class Fleet:
    jobs: int
    clips: int
    latency_scale: float
    workers: int
    limit: int
    seed: int
    clip_timeout_s: float | None = None  # None: the model's own (kling-v2.5-turbo: 120 s)

    def latencies(self) -> list[list[float]]:
        """Each job's clip latencies, seeded."""
        rng = random.Random(self.seed)
        median = MEDIAN_LATENCY_S * self.latency_scale
        return [
            [round(median * math.exp(rng.gauss(0.0, SIGMA)), 3) for _ in range(self.clips)]
            for _ in range(self.jobs)
        ]


@dataclass(frozen=True)
class Result:
    utilisation: float
    longest_wait_s: float
    median_wait_s: float
    longest_wait_after_start_s: float  # from the fleet's first create: the wait without the runs' start-up
    longest_claim_to_create_s: float  # a claimed job's wait for its first slot: fairness among claimed jobs
    utilisation_before_tail: float  # first create to the last create: while there was work to start
    jobs_succeeded: int
    clips_succeeded: int
    wall_s: float
    busy_span_s: float
    max_in_flight: int
    creates: int
    bound_s: float  # no schedule of these clips on `limit` slots ends sooner (first create to last end)
    list_schedule_s: float  # a zero-overhead first-come, first-served pool, clips in submission order
    list_schedule_utilisation: float  # that pool's utilisation, the whole run
    trace: dict[str, Any]  # for the JSON: in flight over time, and each job's claim and first create


def utilisation(series: Sequence[tuple[float, int]], start: float, end: float, limit: int) -> float:
    """The integral of in-flight predictions over [start, end] / (limit x (end - start))."""
    busy = 0.0
    for (at, count), (following, _) in zip(series, [*series[1:], (end, 0)], strict=True):
        low, high = max(at, start), min(following, end)
        if high > low:
            busy += count * (high - low)
    return busy / (limit * (end - start))


def run_fleet(fleet: Fleet, root: Path, logs_to: Path | None = None) -> Result:
    from tests.prefect_stack import start_prefect_stack

    limit_name = f"fleet-predictions-{uuid4().hex[:8]}"
    data_dir = root / "fleet-data"
    with (
        start_prefect_stack(root / "stack") as stack,
        FakeReplicateServer(token=TOKEN, latency_s=1.0) as fake,
    ):
        stack.run_cli(
            "video-generator",
            "setup-prefect",
            "--prediction-limit",
            str(fleet.limit),
            env={"VIDEO_GENERATOR_PREDICTION_LIMIT": limit_name},
        )
        _pause_the_schedule(stack)
        env = {
            "VIDEO_GENERATOR_PROVIDER": "replicate",
            "REPLICATE_API_TOKEN": TOKEN,
            "REPLICATE_BASE_URL": fake.base_url,
            "VIDEO_GENERATOR_PREDICTION_LIMIT": limit_name,
            "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
        }
        queues = [f"fleet-{n}" for n in range(fleet.workers)]
        for name in queues:
            stack.start_worker(name, work_queue=name, env=env)
        submitted = _submit(fleet, fake, LocalStore(data_dir))
        began = time.time()
        runs = [stack.create_flow_run(QUEUE, {"max_jobs": fleet.jobs}, work_queue_name=q) for q in queues]
        timeout = 600 + 4 * sum(sum(job) for job in fleet.latencies()) / fleet.limit
        try:
            ended = [stack.wait_for_flow_run(run.id, timeout=timeout) for run in runs]
            for run in ended:
                print(
                    f"queue run {run.name}: {run.state.message if run.state else 'no state'}", file=sys.stderr
                )
            return _measure(fleet, fake, LocalStore(data_dir), submitted, began)
        finally:
            if logs_to is not None:  # the workers' and server's logs outlive the stack's temporary root
                shutil.copytree(root / "stack" / "logs", logs_to, dirs_exist_ok=True)


def _pause_the_schedule(stack: Any) -> None:
    """The every-minute schedule would start queue runs on the stack's own worker: only ours run."""
    with stack.client() as client:
        client.pause_deployment(client.read_deployment_by_name(QUEUE).id)


def _submit(fleet: Fleet, fake: FakeReplicateServer, store: LocalStore) -> dict[UUID, tuple[str, float]]:
    """Queue every job (oldest first in this order); each job's tag and submission time (wall clock)."""
    submitted: dict[UUID, tuple[str, float]] = {}
    timeout: dict[str, Any] = {} if fleet.clip_timeout_s is None else {"clip_timeout_s": fleet.clip_timeout_s}
    run_options = options(**timeout).model_dump(mode="json", exclude_unset=True)
    for latencies in fleet.latencies():
        tag = new_tag()
        job = make_job(tag, fleet.clips)
        fake.add_fault(*latency_faults(tag, latencies))
        store.enqueue_job(job.job_id, job.model_dump(mode="json"), run_options)
        submitted[job.job_id] = (tag, time.time())
    return submitted


def _measure(
    fleet: Fleet,
    fake: FakeReplicateServer,
    store: LocalStore,
    submitted: dict[UUID, tuple[str, float]],
    began: float,
) -> Result:
    predictions = fake.predictions
    firsts = []
    for tag, _ in submitted.values():
        created = [_wall(p["created_at"]) for p in predictions if tag in p["input"]["prompt"]]
        firsts.append(min(created) if created else math.inf)
    waits = [first - at for first, (_, at) in zip(firsts, submitted.values(), strict=True)]
    fleet_start = min(firsts)
    series = fake.in_flight_series
    starts = [r.arrived for r in fake.create_requests if r.status == 201]
    start, end = min(starts), max(at for at, _ in series)
    rows = [store.queued_job(job_id) for job_id in submitted]
    claimed = [row.claimed_at.timestamp() if row and row.claimed_at else math.inf for row in rows]
    finished = [row.updated_at.timestamp() for row in rows if row is not None and row.updated_at is not None]
    clips = sum(
        sum(1 for record in store.clip_records(job_id) if record.status == "success") for job_id in submitted
    )
    latencies = [seconds for job in fleet.latencies() for seconds in job]
    repeated = _repeated_clips(fleet, predictions, store, submitted, fleet_start)
    pool_s = list_schedule(latencies, fleet.limit)
    return Result(
        utilisation=utilisation(series, start, end, fleet.limit),
        longest_wait_s=max(waits),
        median_wait_s=sorted(waits)[len(waits) // 2],
        longest_wait_after_start_s=max(firsts) - fleet_start,
        longest_claim_to_create_s=max(first - at for first, at in zip(firsts, claimed, strict=True)),
        utilisation_before_tail=utilisation(series, start, max(starts), fleet.limit),
        jobs_succeeded=sum(1 for row in rows if row is not None and row.status == "succeeded"),
        clips_succeeded=clips,
        wall_s=max(finished) - min(at for _, at in submitted.values()),
        busy_span_s=end - start,
        max_in_flight=fake.max_in_flight,
        creates=fake.creates,
        bound_s=max(max(latencies), sum(latencies) / fleet.limit),
        list_schedule_s=pool_s,
        list_schedule_utilisation=sum(latencies) / (fleet.limit * pool_s),
        trace={
            "in_flight": [(round(at - start, 3), count) for at, count in series if at >= start],
            "prediction_statuses": dict(Counter(p["status"] for p in predictions)),
            "extra_predictions": dict(Counter(why for clip in repeated for why in clip["why_again"])),
            "repeated_clips": repeated,
            "jobs": [
                {
                    "submitted": at - fleet_start,
                    "claimed": when - fleet_start,
                    "first_create": first - fleet_start,
                }
                for (_, at), when, first in zip(submitted.values(), claimed, firsts, strict=True)
            ],
        },
    )


def _repeated_clips(
    fleet: Fleet,
    predictions: list[dict[str, Any]],
    store: LocalStore,
    submitted: dict[UUID, tuple[str, float]],
    fleet_start: float,
) -> list[dict[str, Any]]:
    """Every clip the fake made more than one prediction for: its predictions as the fake saw them, its
    ledger rows (the error says why an attempt ended), its clip row, and why each later prediction was made:
    the reason the ledger gives for ending the one before it."""
    repeated = []
    for job_index, ((tag, _), job_id, latencies) in enumerate(
        zip(submitted.values(), submitted, fleet.latencies(), strict=True)
    ):
        ledger = store.predictions(job_id)
        records = {record.clip_index: record for record in store.clip_records(job_id)}
        for clip_index, latency in enumerate(latencies):
            made = [p for p in predictions if clip_marker(tag, clip_index) in p["input"]["prompt"]]
            if len(made) < 2:
                continue
            rows = {row.prediction_id: row for row in ledger if row.clip_index == clip_index}
            record = records.get(clip_index)
            repeated.append(
                {
                    "job": job_index,
                    "clip": clip_index,
                    "latency_fault_s": latency,
                    "predictions": [_prediction_row(p, rows, fleet_start) for p in made],
                    "clip_row": None
                    if record is None
                    else {"status": record.status, "attempts": record.attempts, "error": record.error},
                    "why_again": [_why_again(rows.get(p["id"])) for p in made[:-1]],
                }
            )
    return repeated


def _prediction_row(prediction: dict[str, Any], rows: dict[str, Any], fleet_start: float) -> dict[str, Any]:
    row = rows.get(prediction["id"])
    completed = prediction.get("completed_at")
    return {
        "id": prediction["id"],
        "status": prediction["status"],
        "created": round(_wall(prediction["created_at"]) - fleet_start, 3),
        "ended": None if completed is None else round(_wall(completed) - fleet_start, 3),
        "cancel_requests": prediction["cancel_requests"],
        "ledger": None if row is None else {"status": row.status, "error": row.error, "run_id": row.run_id},
    }


def _why_again(row: Any) -> str:
    """The ledger's reason a prediction's attempt ended, without ids: what made the clip pay again."""
    if row is None:
        return "not in the ledger"
    reason = row.error or f"ended {row.status}"
    return re.sub(r"\b[0-9a-z]{20,}\b", "<id>", reason)


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def format_result(fleet: Fleet, result: Result) -> str:
    met = "met" if result.utilisation_before_tail >= TARGET_UTILISATION else "missed"
    pool = result.list_schedule_utilisation
    rows = [
        (
            "Utilisation while the backlog lasts (first create to last create)",
            f"{result.utilisation_before_tail:.3f}",
            f"≥ {TARGET_UTILISATION}",
            met,
        ),
        (
            "Utilisation of the limit, the whole run (first create to last end)",
            f"{result.utilisation:.3f}",
            "",
            "",
        ),
        (
            "The whole run's utilisation of a zero-overhead FIFO pool, same clips and order",
            f"{pool:.3f} ({result.list_schedule_s:.1f} s)",
            "",
            "",
        ),
        ("The whole run's utilisation as a share of that pool's", f"{result.utilisation / pool:.3f}", "", ""),
        ("Longest wait, submission to first create", f"{result.longest_wait_s:.1f} s", "", ""),
        ("Median wait, submission to first create", f"{result.median_wait_s:.1f} s", "", ""),
        (
            "Longest wait after the fleet's first create",
            f"{result.longest_wait_after_start_s:.1f} s",
            "",
            "",
        ),
        (
            "Longest wait of a claimed job for its first create",
            f"{result.longest_claim_to_create_s:.1f} s",
            "",
            "",
        ),
        ("Jobs succeeded", f"{result.jobs_succeeded}/{fleet.jobs}", "", ""),
        ("Clips delivered", f"{result.clips_succeeded}/{fleet.jobs * fleet.clips}", "", ""),
        ("Wall time, first submission to last job's end", f"{result.wall_s:.1f} s", "", ""),
        ("First create to last prediction's end", f"{result.busy_span_s:.1f} s", "", ""),
        ("Schedule bound (sum of latencies / limit)", f"{result.bound_s:.1f} s", "", ""),
        ("Most predictions in flight", f"{result.max_in_flight}", f"≤ {fleet.limit}", ""),
        ("Predictions created", f"{result.creates}", "", ""),
        ("Predictions by status", str(result.trace["prediction_statuses"]), "", ""),
        (
            "Extra predictions (a clip's second or later), by why the one before ended",
            str(result.trace["extra_predictions"]),
            "",
            "",
        ),
    ]
    lines = ["| Figure | Value | Target | |", "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {value} | {target} | {mark} |" for label, value, target, mark in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--latency-scale", type=float, default=1.0, help="times the 20 s median latency")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=20, help="the global prediction limit")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument(
        "--clip-timeout",
        type=float,
        default=None,
        help="each job's clip deadline in seconds (default: the model's, 120 s; a clip still processing then "
        "is canceled and retried, which the fake answers at its default latency: an extra prediction)",
    )
    parser.add_argument("--json", type=Path, default=Path("out/fleet.json"))
    parser.add_argument("--logs", type=Path, default=Path("out/fleet-logs"), help="the stack's logs, kept")
    args = parser.parse_args(argv)
    fleet = Fleet(
        args.jobs, args.clips, args.latency_scale, args.workers, args.limit, args.seed, args.clip_timeout
    )
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="fleet-") as root:
        result = run_fleet(fleet, Path(root), args.logs)
    machine = describe_machine(load)
    print(format_result(fleet, result))
    print("\n".join(f"- {name}: {value}" for name, value in machine.items()))
    write_json(args.json, {"fleet": asdict(fleet), "result": asdict(result), "machine": machine})
    return 0


if __name__ == "__main__":
    sys.exit(main())
