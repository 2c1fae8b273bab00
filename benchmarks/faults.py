"""The fault matrix (issue 7, issue 13): one job through the real flow on the fake Replicate API, per fault.

For each fault (429 storm, 5xx burst, connection resets, failed predictions transient and permanent, hung
predictions, short, corrupt and expired outputs, failed downloads, a storage outage mid-job, `kill -9` of
the flow process mid-job followed by a rerun, the ambiguous create: made, answer lost) and each way runs of
one job meet (several at once; a lost create while the prediction list is down, then a rerun; storage down
for a whole run, then a rerun on another worker; a local preview, then the paid run) it reports, from the
fake's own records and the store: clips delivered, predictions created and billed, failed, canceled, still
running at the end, duplicates (a clip with more than one successful, usable prediction), re-paid (a
successful prediction whose output could not be used: short, corrupt or expired, so another was paid for),
lost (a clip that ended failed although a usable prediction for it succeeded) and whether `min_success`
clips were delivered.

The job: 6 text-only clips of 4 s on veo-3.1, min_success 3; every prompt carries the job's tag and the
clip's index, so predictions are attributed per scenario and per clip. Faults hit some clips, not all.
A scenario is one or more runs of the same job (same job id, same store), in-process, one after the other;
a run may be several runs started at once in threads. The kill scenarios first run the CLI as a
subprocess and SIGKILL its process group: once when the killed run's predictions are all on its ledger,
once when one exists that the ledger has not recorded yet (rerun as on another worker: no work directory).
Their clip leases are short (`VIDEO_GENERATOR_CLIP_LEASE_SECONDS`, for the killed CLI and the rerun), so the
rerun can take the dead run's clips over after seconds rather than a minute.

Required of every row: nothing lost, no duplicates, nothing left running, and at least `min_success` clips
wherever the fault leaves that possible; where a scenario says so, exactly one prediction per clip over all
its runs, and a last run whose clips are all its own paid ones (none reused, none a preview).

    .venv/bin/python benchmarks/faults.py [--only NAME ...] [--verbose]

prints the table (markdown) and exits 1 if any requirement fails. It starts what it needs: a temporary
Prefect server, the fake Replicate API, a data directory per scenario. tests/test_fault_matrix.py runs the
same scenarios and asserts the rows.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal
from uuid import UUID, uuid4

from benchmarks.common import clip_marker, environment
from clipgen.backends import register_store
from clipgen.job import ClipPrompts, Clips, GenerationOptions
from clipgen.prediction_states import billed
from clipgen.settings import Settings
from clipgen.stores.base import INTENT_PREFIX, VIDEO_BUCKET, StoredObject
from clipgen.stores.local import LocalStore
from staging.fake_replicate.server import FakeReplicateServer, Fault

TOKEN = "fault-matrix-token"
MODEL = "veo-3.1"
CLIPS = 6
MIN_SUCCESS = 3
DURATION_S = 4.0
HANG_TIMEOUT_S = 2.0
STORAGE_FAILURES = 3
FLAKY_STORE = "fault-matrix-flaky"
DOWN_STORE = "fault-matrix-storage-down"
GATED_STORE = "fault-matrix-gated"
GATE_TIMEOUT_S = 120.0  # how long runs started together wait for each other at their first clip
# Outputs that could not be used: the clip had to pay for another prediction.
UNUSABLE = frozenset({"short", "corrupt", "expired"})
RUNNING = frozenset({"starting", "processing"})
SETTLE_S = 2.0  # how long to give cancels sent at the end of a run to land on the fake
KILL_WAIT_S = 120.0  # the CLI imports Prefect and starts a flow run before it creates anything
KILL_AFTER = 5  # `recorded` kill: all the run's first predictions (concurrency 5) exist and are recorded
KILL_LATENCY_S = 3.0  # so those predictions are still running when it dies
# The killed run's clip leases: the rerun takes its clips over once they expire (the default is 60 s).
KILL_LEASE_S = 3.0
AT_ONCE = 3  # runs of the job started together in the concurrent scenario
AT_ONCE_LATENCY_S = 2.0  # so the runs that lost a clip's lease wait for its holder
ENVIRONMENT = {
    "REPLICATE_POLL_INTERVAL": "0.05",
    "VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS": "0.1",
    # The global prediction limit is not what is measured here: take no slots (and make no limit calls).
    "VIDEO_GENERATOR_PREDICTION_LIMIT": "",
}


class FlakyVideoStore(LocalStore):
    """The real local store, but the first `failures` uploads of clips raise (-1: every one): a storage
    outage mid-job, or for the whole run."""

    def __init__(self, data_dir: Path, failures: int = STORAGE_FAILURES) -> None:
        super().__init__(data_dir)
        self.failures = failures

    def put_object(self, bucket: str, path: str, source: Path, content_type: str) -> StoredObject:
        if bucket == VIDEO_BUCKET and self.failures != 0:
            self.failures -= self.failures > 0
            raise ConnectionResetError(f"scripted storage outage writing {bucket}/{path}")
        return super().put_object(bucket, path, source, content_type)


class GatedStore(LocalStore):
    """The real local store, but a run's clips take no lease before every run started with it is at that
    point too (`gate`): runs started at once meet at their clips, however unevenly the Prefect server starts
    them (on 2 busy cores, creating a flow run on the test server took up to 20 s: without the gate the
    last run often reached its clips after the first had stored them all)."""

    gate: ClassVar[threading.Barrier | None] = None

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self._at_gate = threading.Lock()
        self._through = False

    def take_clip_lease(self, job_id: UUID, clip_index: int, owner: str, seconds: float, model: str) -> bool:
        with self._at_gate:  # the run's other clips wait here meanwhile
            gate = GatedStore.gate
            if gate is not None and not self._through:
                self._through = True
                with suppress(threading.BrokenBarrierError):  # a run that never got there: go on
                    gate.wait(GATE_TIMEOUT_S)
        return super().take_clip_lease(job_id, clip_index, owner, seconds, model)


# One store per flow run (the run opens its backends once), so each run sees the outage from its start.
register_store(FLAKY_STORE, lambda settings: FlakyVideoStore(settings.data_dir))
register_store(DOWN_STORE, lambda settings: FlakyVideoStore(settings.data_dir, failures=-1))
register_store(GATED_STORE, lambda settings: GatedStore(settings.data_dir))


FaultScript = Callable[[str], Sequence[Fault]]
"""The faults of a scenario, given the job's tag."""


def on_clips(kind: str, times_by_clip: Mapping[int, int], **fields: Any) -> FaultScript:
    """`kind` for some clips: clip index -> how many of its creates/predictions/downloads it hits."""

    def script(tag: str) -> list[Fault]:
        return [
            Fault.model_validate({"kind": kind, "match": clip_marker(tag, index), "times": times, **fields})
            for index, times in times_by_clip.items()
        ]

    return script


def no_faults(tag: str) -> list[Fault]:
    return []


@dataclass(frozen=True)
class Run:
    """One in-process run of a scenario's job (same job id, same store as the runs before it)."""

    provider: str = "replicate"
    store: str = "local"
    at_once: int = 1  # this many runs of the job started together, in threads
    # As on another worker: the data directory's work directory (downloads, attempts) deleted first.
    elsewhere: bool = False
    # Faults that last exactly as long as this run: added before it starts, lifted when it ends.
    during: FaultScript = no_faults


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str  # what goes wrong, for the table
    faults: FaultScript = no_faults
    # kill -9 the flow process (the CLI) mid-job, then run `runs`: "recorded" once its predictions are on
    # the ledger, "unrecorded" when one exists that the ledger does not know yet; "" kills nothing.
    kill: Literal["", "recorded", "unrecorded"] = ""
    runs: tuple[Run, ...] = (Run(),)
    # Faults added only once clip 0's first prediction exists: they hit its later attempts.
    then: FaultScript | None = None
    min_success_reachable: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float = DURATION_S
    lease_s: float | None = None  # VIDEO_GENERATOR_CLIP_LEASE_SECONDS for every run, a killed CLI's too
    # Exactly one prediction per clip, over all the scenario's runs.
    one_prediction_per_clip: bool = False
    # The last run delivers every clip from a prediction of its own plan: none reused, none a preview.
    paid_clips: bool = False

    def __str__(self) -> str:
        return self.name


def _scenarios() -> list[Scenario]:
    e005 = "The input or output was flagged as sensitive (E005)"

    def slow(tag: str) -> list[Fault]:  # the killed run's predictions are still running when it dies
        return [Fault(kind="latency", match=tag, times=-1, seconds=KILL_LATENCY_S)]

    def list_down(tag: str) -> list[Fault]:  # 500, not 503/504: the client retries those GETs by itself
        return [Fault(kind="list_error", times=-1, status=500)]

    scenarios = [
        Scenario("none", "no fault (control)", one_prediction_per_clip=True),
        Scenario(
            "429 storm",
            "every create of the job answered 429 for 3 s (hint: resets in ~1 s)",
            lambda tag: [Fault(kind="rate_limit", match=tag, times=-1, lasts_s=3.0, seconds=1.0)],
        ),
        Scenario(
            "5xx burst",
            "creates answered 503: clip 0 twice, clips 1 and 2 once",
            on_clips("server_error", {0: 2, 1: 1, 2: 1}, status=503),
        ),
        Scenario(
            "connection resets",
            "create connections dropped before an answer: clip 0 twice, clip 1 once",
            on_clips("connection_reset", {0: 2, 1: 1}),
        ),
        Scenario(
            "failed (transient)",
            "predictions fail 'GPU worker lost': clip 0 twice, clip 1 once",
            on_clips("fail", {0: 2, 1: 1}, error="GPU worker lost"),
        ),
        Scenario(
            "failed (permanent)",
            "predictions of clips 0 and 1 always fail E005 (content)",
            on_clips("fail", {0: -1, 1: -1}, error=e005),
        ),
        Scenario(
            "failed (permanent, most clips)",
            "predictions of clips 0-3 always fail E005: 2 of the 3 needed are possible",
            on_clips("fail", dict.fromkeys(range(4), -1), error=e005),
            min_success_reachable=False,
        ),
        Scenario(
            "hung",
            f"first prediction of clips 0 and 1 never ends (deadline {HANG_TIMEOUT_S:g} s)",
            on_clips("hang", {0: 1, 1: 1}),
            options={"clip_timeout_s": HANG_TIMEOUT_S},
        ),
        Scenario(
            "short output",
            # At 4 s a half-length output (2.0 s) is within the accepted 2 s shortfall: ask 6 s here.
            "first output of clips 0 and 1 half as long (6 s clips: 3 s < 4 s accepted)",
            on_clips("short", {0: 1, 1: 1}),
            duration_s=6.0,
        ),
        Scenario(
            "corrupt output",
            "first output of clips 0 and 1 not a decodable video",
            on_clips("corrupt", {0: 1, 1: 1}),
        ),
        Scenario(
            "expired output",
            "first output of clips 0 and 1 gone (404) before the download",
            on_clips("expired", {0: 1, 1: 1}),
        ),
        Scenario(
            "download errors",
            "downloads answered 500: clip 0 three times (one attempt's worth), clip 1 once",
            on_clips("download_error", {0: 3, 1: 1}),
        ),
        Scenario(
            "storage outage",
            f"the first {STORAGE_FAILURES} clip uploads of the run fail (connection reset)",
            runs=(Run(store=FLAKY_STORE),),
            one_prediction_per_clip=True,
        ),
        Scenario(
            "kill -9 + rerun",
            f"flow process (CLI) killed once its first {KILL_AFTER} predictions exist and are on its "
            f"ledger (each takes {KILL_LATENCY_S:g} s); the same job rerun ({KILL_LEASE_S:g} s clip leases)",
            slow,
            kill="recorded",
            lease_s=KILL_LEASE_S,
            one_prediction_per_clip=True,
        ),
        Scenario(
            "kill -9 in a create + rerun elsewhere",
            "flow process (CLI) killed when a prediction exists that its ledger has not recorded yet "
            "(between Replicate's answer and the ledger write); the job rerun on another worker "
            f"(same store, no work directory; {KILL_LEASE_S:g} s clip leases)",
            slow,
            kill="unrecorded",
            runs=(Run(elsewhere=True),),
            lease_s=KILL_LEASE_S,
            one_prediction_per_clip=True,
        ),
        Scenario(
            "ambiguous create",
            "create made, then its connection dropped without an answer: clips 0 and 1",
            on_clips("reset_after_create", {0: 1, 1: 1}),
            one_prediction_per_clip=True,
        ),
        Scenario(
            "ambiguous create on a retry",
            "clip 0: its first prediction fails ('GPU worker lost'); the retry's create is made, then "
            "its connection dropped without an answer",
            on_clips("fail", {0: 1}, error="GPU worker lost"),
            then=on_clips("reset_after_create", {0: 1}),
        ),
        Scenario(
            "concurrent runs",
            f"{AT_ONCE} runs of the same job at once (threads, same store), meeting at their first clip "
            f"lease; the second starts its clips in reverse; each prediction takes {AT_ONCE_LATENCY_S:g} s",
            lambda tag: [Fault(kind="latency", match=tag, times=-1, seconds=AT_ONCE_LATENCY_S)],
            runs=(Run(store=GATED_STORE, at_once=AT_ONCE),),
            one_prediction_per_clip=True,
        ),
        Scenario(
            "lost create, list down",
            "create made, answer lost (clips 0 and 1) while the prediction list answers 500 for the "
            "whole run; then the job rerun with the list back",
            on_clips("reset_after_create", {0: 1, 1: 1}),
            runs=(Run(during=list_down), Run()),
            one_prediction_per_clip=True,
        ),
        Scenario(
            "unstored, then another worker",
            "every clip upload of the first run fails (storage down); the job rerun on another worker "
            "(no work directory) with storage back",
            runs=(Run(store=DOWN_STORE), Run(elsewhere=True)),
            one_prediction_per_clip=True,
        ),
        Scenario(
            "preview, then paid",
            "the job run with the local preview provider, then with Replicate",
            runs=(Run(provider="local"), Run()),
            one_prediction_per_clip=True,
            paid_clips=True,
        ),
    ]
    return scenarios


SCENARIOS: list[Scenario] = _scenarios()


@dataclass(frozen=True)
class Row:
    scenario: str
    fault: str
    state: str  # the flow run's final state
    clips: int
    delivered: int
    created: int
    billed: int  # predictions that started, which Replicate charges for (failed and canceled ones too)
    failed: int
    canceled: int
    running_at_end: int
    duplicates: int
    repaid_unusable: int
    lost: int
    min_success_met: str  # yes, no, or n.a. where the fault makes it impossible
    seconds: float
    note: str = ""
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def requirement_problems(row: Row) -> list[str]:
    """What the row breaks of: nothing lost, no duplicates, nothing running, min_success where possible."""
    problems = []
    if row.lost:
        problems.append(f"{row.lost} paid clip(s) lost")
    if row.duplicates:
        problems.append(f"{row.duplicates} clip(s) paid twice")
    if row.running_at_end:
        problems.append(f"{row.running_at_end} prediction(s) left running")
    if row.min_success_met == "no":
        problems.append(f"fewer than {MIN_SUCCESS} clips")
    if (row.state == "Completed") != (row.delivered >= MIN_SUCCESS):
        problems.append(f"flow {row.state} with {row.delivered} clips stored")
    return problems


def make_job(tag: str, duration_s: float = DURATION_S) -> ClipPrompts:
    prompts = [
        {
            "clip_index": i,
            "prompt": f"{clip_marker(tag, i)} a paper boat drifts down a rainy street, shot {i}",
            "duration": duration_s,
        }
        for i in range(CLIPS)
    ]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts})


def start_fake() -> FakeReplicateServer:
    """The fake every scenario shares (each job's tag keeps its faults and predictions apart)."""
    return FakeReplicateServer(token=TOKEN, latency_s=0.2)


def _predictions_of(fake: FakeReplicateServer, text: str) -> list[dict[str, Any]]:
    return [p for p in fake.predictions if text in str((p.get("input") or {}).get("prompt", ""))]


def _settled(fake: FakeReplicateServer, tag: str, wait_s: float = SETTLE_S) -> list[dict[str, Any]]:
    """The job's predictions, once none is running, or after `wait_s` (cancels sent at the end may still
    be landing)."""
    deadline = time.monotonic() + wait_s
    while True:
        predictions = _predictions_of(fake, tag)
        if not any(p["status"] in RUNNING for p in predictions) or time.monotonic() >= deadline:
            return predictions
        time.sleep(0.05)


def run_scenario(
    scenario: Scenario,
    fake: FakeReplicateServer,
    data_dir: Path,
    *,
    prefect_api_url: str | None = None,
) -> Row:
    """Run one job through the real flow with `scenario`'s faults and runs; measure it from the fake and
    the store.

    `data_dir` is the scenario's own local store. The kill scenario runs the CLI as a subprocess against
    the Prefect server at `prefect_api_url` (default: the one this process uses).
    """
    began = time.monotonic()
    tag = uuid4().hex[:12]
    job = make_job(tag, scenario.duration_s)
    options = GenerationOptions(model=MODEL, min_success=MIN_SUCCESS, **dict(scenario.options))
    fake.add_fault(*scenario.faults(tag))
    env = {
        **ENVIRONMENT,
        "REPLICATE_API_TOKEN": TOKEN,
        "REPLICATE_BASE_URL": fake.base_url,
        "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
    }
    if scenario.lease_s is not None:
        env["VIDEO_GENERATOR_CLIP_LEASE_SECONDS"] = str(scenario.lease_s)
    notes = []
    played: list[Played] = []
    store = LocalStore(data_dir)
    with environment(env):
        if scenario.kill:
            notes.append(_run_and_kill(scenario.kill, job, fake, tag, data_dir, prefect_api_url))
        with _then(scenario, fake, tag):
            for run in scenario.runs:
                outcomes = _play(run, job, options, fake, tag)
                played.append(Played(run, outcomes, *_after_run(fake, tag, store, job)))
    last = played[-1].outcomes
    if len(played) > 1 or len(last) > 1:
        notes += [_describe(number, step) for number, step in enumerate(played, 1)]
    notes += [f"flow returned no clips: {o.result!r}" for o in last if o.clips is None]
    states = [o.state for o in last]
    predictions = _settled(fake, tag)
    row = _measure(
        scenario, job, tag, predictions, store, states[0] if len(set(states)) == 1 else ", ".join(states)
    )
    row = replace(row, seconds=round(time.monotonic() - began, 1), note="; ".join(notes))
    problems = requirement_problems(row) + scenario_problems(scenario, row, played, store, job)
    return replace(row, problems=tuple(problems))


@dataclass(frozen=True)
class Outcome:
    """How one flow run ended: its final state's name and its result (Clips, or what it raised)."""

    state: str
    result: Any

    @property
    def clips(self) -> Clips | None:
        return self.result if isinstance(self.result, Clips) else None


@dataclass(frozen=True)
class Played:
    """A run of a scenario (or its runs at once), and what the fake and the ledger showed after it."""

    run: Run
    outcomes: list[Outcome]
    created: int  # the job's predictions on the fake so far, over all runs
    downloads: int  # downloads of their outputs so far
    ledger: str  # the job's ledger by status, e.g. "4 delivered, 2 intended"


def _play(
    run: Run, job: ClipPrompts, options: GenerationOptions, fake: FakeReplicateServer, tag: str
) -> list[Outcome]:
    """`run`: the job through the flow, `run.at_once` times together, with `run.during`'s faults. Runs at
    once meet at their first clip lease on the gated store; every other one lists the job's clips reversed,
    so some clips are raced for at the same instant and others met from both ends."""
    if run.elsewhere:
        shutil.rmtree(Settings().work_dir, ignore_errors=True)
    during = list(run.during(tag))
    fake.add_fault(*during)
    GatedStore.gate = threading.Barrier(run.at_once) if run.at_once > 1 else None

    def one(number: int) -> Outcome:
        state = _run_flow(_in_order(job, reverse=number % 2 == 1), options, run.provider, run.store)
        return Outcome(state.name or str(state.type), state.result(raise_on_failure=False))

    try:
        with ThreadPoolExecutor(run.at_once, thread_name_prefix="fault-matrix-run") as pool:
            return [future.result() for future in [pool.submit(one, n) for n in range(run.at_once)]]
    finally:
        GatedStore.gate = None
        _lift(fake, during)


def _in_order(job: ClipPrompts, reverse: bool) -> ClipPrompts:
    """The same job (same id, same clips), its clips listed in reverse: the order a run starts them in."""
    return job.model_copy(update={"clip_prompts": job.clip_prompts[::-1]}) if reverse else job


def _after_run(
    fake: FakeReplicateServer, tag: str, store: LocalStore, job: ClipPrompts
) -> tuple[int, int, str]:
    predictions = _predictions_of(fake, tag)
    statuses = Counter(p.status for p in store.predictions(job.job_id))
    ledger = ", ".join(f"{n} {status}" for status, n in statuses.most_common()) or "empty"
    return len(predictions), sum(int(p.get("downloads") or 0) for p in predictions), ledger


def _lift(fake: FakeReplicateServer, faults: Sequence[Fault]) -> None:
    """Remove `faults` from the fake, whatever is left of them; the others stay as they are."""
    if not faults:
        return

    def key(fault: Fault) -> dict[str, Any]:
        return fault.model_dump(exclude={"times", "lasts_s"})

    lifted = [key(fault) for fault in faults]
    rest = [fault for fault in fake.faults if key(fault) not in lifted]
    fake.clear_faults()
    fake.add_fault(*rest)


def _describe(number: int, played: Played) -> str:
    """One run (or runs at once) of a multi-run scenario, for the notes."""
    run, outcomes = played.run, played.outcomes
    where = f" on {run.provider}" if run.provider != "replicate" else ""
    where += f", store {run.store}" if run.store != "local" else ""
    where += ", elsewhere" if run.elsewhere else ""
    parts = []
    for outcome in outcomes:
        clips = outcome.clips
        if clips is None:
            parts.append(outcome.state)
            continue
        reused = sum(clip.reused for clip in clips.clips)
        parts.append(
            f"{outcome.state}, {clips.successful_clips} clips ({reused} reused), "
            f"spent ${clips.spent_this_run:.2f} (all runs ${clips.spent_all_runs:.2f})"
        )
    together = f"{len(outcomes)} at once: " if len(outcomes) > 1 else ""
    after = f"after it {played.created} predictions, {played.downloads} downloads; ledger {played.ledger}"
    return f"run {number}{where}: {together}{' | '.join(parts)} [{after}]"


def scenario_problems(
    scenario: Scenario, row: Row, played: Sequence[Played], store: LocalStore, job: ClipPrompts
) -> list[str]:
    """What the row breaks of the scenario's own requirements: one prediction per clip, a last run of paid
    clips, and (over several runs) each paid prediction in exactly one run's spend."""
    problems = []
    if scenario.one_prediction_per_clip and row.created != row.clips:
        problems.append(f"{row.created} predictions for {row.clips} clips")
    results = [o.clips for step in played for o in step.outcomes]
    if len(results) > 1 and not scenario.kill and all(results):  # a killed run reports no spend
        runs = round(sum(r.spent_this_run for r in results if r), 4)
        job_total = billed(store.predictions(job.job_id))
        if runs != job_total:
            problems.append(f"the runs' spend adds up to ${runs:.2f}, the job's ledger to ${job_total:.2f}")
    if scenario.paid_clips:
        last = [o.clips for o in played[-1].outcomes]
        delivered = [clip for clips in last if clips for clip in clips.clips if clip.status == "success"]
        reused = [clip.clip_index for clip in delivered if clip.reused or not clip.prediction_id]
        if reused:
            problems.append(f"clips {reused} not from a prediction of the last run")
        previews = [
            record.clip_index
            for record in store.clip_records(job.job_id)
            if record.status == "success" and (record.metadata.get("preview") or not record.prediction_id)
        ]
        if previews:
            problems.append(f"clips {previews} stored as previews")
    return problems


@contextmanager
def _then(scenario: Scenario, fake: FakeReplicateServer, tag: str) -> Iterator[None]:
    """Add `scenario.then`'s faults as soon as clip 0's first prediction exists, while the body runs."""
    if scenario.then is None:
        yield
        return
    faults = scenario.then(tag)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if _predictions_of(fake, clip_marker(tag, 0)):
                fake.add_fault(*faults)
                return
            done.wait(0.005)

    watcher = threading.Thread(target=watch, name="fault-matrix-then")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _run_flow(job: ClipPrompts, options: GenerationOptions, provider: str, store: str) -> Any:
    from flows.video_generator import generate_video_clips

    return generate_video_clips(job, options, provider=provider, store=store, return_state=True)


def _measure(
    scenario: Scenario,
    job: ClipPrompts,
    tag: str,
    predictions: list[dict[str, Any]],
    store: LocalStore,
    state: str,
) -> Row:
    records = {record.clip_index: record for record in store.clip_records(job.job_id)}
    delivered = sum(record.status == "success" for record in records.values())
    duplicates = repaid = lost = 0
    for prompt in job.clip_prompts:
        index = prompt.clip_index
        marker = clip_marker(tag, index)
        record = records.get(index)
        stored = record is not None and record.status == "success"
        delivered_from = record.prediction_id if stored and record else None
        succeeded = [p for p in predictions if marker in p["input"]["prompt"] and p["status"] == "succeeded"]
        usable = [p for p in succeeded if not UNUSABLE & set(p["faults"]) or p["id"] == delivered_from]
        duplicates += len(usable) > 1
        repaid += len(succeeded) - len(usable)
        lost += bool(usable) and not stored
    met = "yes" if delivered >= MIN_SUCCESS else "no"
    return Row(
        scenario=scenario.name,
        fault=scenario.fault,
        state=state,
        clips=len(job.clip_prompts),
        delivered=delivered,
        created=len(predictions),
        billed=sum(bool(p.get("billed")) for p in predictions),
        failed=sum(p["status"] == "failed" for p in predictions),
        canceled=sum(p["status"] == "canceled" for p in predictions),
        running_at_end=sum(p["status"] in RUNNING for p in predictions),
        duplicates=duplicates,
        repaid_unusable=repaid,
        lost=lost,
        min_success_met=met if scenario.min_success_reachable else "n.a.",
        seconds=0.0,
    )


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("video-generator")
    if script.is_file():
        return [str(script)]
    return [sys.executable, str(Path(__file__).resolve().parent.parent / "flows" / "video_generator.py")]


def _ledger(data_dir: Path) -> tuple[set[str], int]:
    """The prediction ids in the local store's ledger, and how many intents it holds (creates sent or about
    to be, not answered yet: no prediction id), read without writing (the flow may be writing)."""
    db = data_dir / "video_generator.db"
    if not db.is_file():
        return set(), 0
    try:
        with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5.0)) as conn:
            rows = conn.execute("SELECT prediction_id, status FROM clip_predictions").fetchall()
    except sqlite3.OperationalError:  # the table is not there yet
        return set(), 0
    ids = {
        str(prediction_id) for prediction_id, _ in rows if not str(prediction_id).startswith(INTENT_PREFIX)
    }
    return ids, sum(status == "intended" for _, status in rows)


def _kill_point(
    kill: Literal["recorded", "unrecorded"], fake: FakeReplicateServer, tag: str, data_dir: Path
) -> bool:
    """Whether to kill now. `recorded`: every prediction the run can have at once exists and is on the
    ledger (no create in flight). `unrecorded`: a prediction exists that the ledger does not know yet (the
    run died between Replicate's answer and the ledger write)."""
    made = {p["id"] for p in _predictions_of(fake, tag)}
    known, intents = _ledger(data_dir)
    if kill == "recorded":
        return len(made) >= KILL_AFTER and made <= known and not intents
    return bool(made - known)


def _run_and_kill(
    kill: Literal["recorded", "unrecorded"],
    job: ClipPrompts,
    fake: FakeReplicateServer,
    tag: str,
    data_dir: Path,
    prefect_api_url: str | None,
) -> str:
    """Run the job with the CLI until the kill point, then SIGKILL its process group. Returns what the
    dead run left: its predictions on the fake, and how many of them its ledger knows."""
    if prefect_api_url is None:
        from prefect.settings import PREFECT_API_URL

        prefect_api_url = str(PREFECT_API_URL.value())
    data_dir.mkdir(parents=True, exist_ok=True)
    job_file = data_dir.parent / f"job-{tag}.json"
    job_file.write_text(job.model_dump_json())
    log_file = data_dir.parent / f"cli-{tag}.log"
    command = [*_cli(), "run", str(job_file), "--provider", "replicate", "--model", MODEL]
    command += ["--store", "local", "--min-success", str(MIN_SUCCESS)]
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + KILL_WAIT_S
            while not _kill_point(kill, fake, tag, data_dir):
                if process.poll() is not None:
                    output = log_file.read_text(errors="replace")[-3000:]
                    raise RuntimeError(
                        f"the CLI ended (exit {process.returncode}) before the kill:\n{output}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the CLI did not reach the kill point in {KILL_WAIT_S:g} s")
                time.sleep(0.005)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the CLI and any children
            process.wait()
    made = _predictions_of(fake, tag)
    known, intents = _ledger(data_dir)
    running = sum(p["status"] in RUNNING for p in made)
    unknown = sum(p["id"] not in known for p in made)
    missed = (
        " (the kill missed the window: nothing unrecorded)" if kill == "unrecorded" and not unknown else ""
    )
    return (
        f"the killed run created {len(made)} ({running} still running), {unknown} of them not on its "
        f"ledger, which held {intents} unanswered intent(s){missed}"
    )


# --- the table -------------------------------------------------------------------------------------------

COLUMNS = (
    ("scenario", "Scenario"),
    ("fault", "Fault"),
    ("state", "Flow"),
    ("delivered", "Clips delivered"),
    ("created", "Predictions created"),
    ("billed", "Billed"),
    ("failed", "Failed"),
    ("canceled", "Canceled"),
    ("running_at_end", "Running at end"),
    ("duplicates", "Duplicates"),
    ("repaid_unusable", "Re-paid (unusable output)"),
    ("lost", "Lost"),
    ("min_success_met", f"≥ {MIN_SUCCESS} clips"),
    ("seconds", "s"),
    ("result", "Result"),
)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table, one line per scenario, then the notes."""

    def cell(row: Row, key: str) -> str:
        if key == "result":
            return "ok" if row.ok else "FAIL: " + "; ".join(row.problems)
        if key == "delivered":
            return f"{row.delivered}/{row.clips}"
        return str(getattr(row, key)).replace("|", "\\|")

    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(row, key) for key, _ in COLUMNS) + " |" for row in rows]
    notes = [f"- {row.scenario}: {row.note}" for row in rows if row.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this scenario (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's logs")
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if not chosen:
        parser.error(f"no such scenario; choose from: {', '.join(s.name for s in SCENARIOS)}")
    # Before Prefect is imported: no usage data, and the table instead of the runs' logs.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
        logging.getLogger("clipgen").setLevel(logging.ERROR)
    from prefect.testing.utilities import prefect_test_harness

    began = time.monotonic()
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="fault-matrix-") as root,
        prefect_test_harness(server_startup_timeout=120),
        start_fake() as fake,
    ):
        for scenario in chosen:
            print(f"running: {scenario.name}", file=sys.stderr, flush=True)
            row = run_scenario(scenario, fake, Path(root) / f"s{len(rows)}" / "data")
            rows.append(row)
            print(f"  {'ok' if row.ok else 'FAIL'} in {row.seconds:g} s", file=sys.stderr, flush=True)
    print(format_table(rows))
    failing = [row.scenario for row in rows if not row.ok]
    print(f"\n{len(rows)} scenarios in {time.monotonic() - began:.0f} s; ", end="")
    print(f"requirements failed: {', '.join(failing)}" if failing else "every requirement met")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
