"""Issue 13, shown: several runs of one job at once, through faults and a `kill -9`, pay once per clip.

One scenario per store (local: files + SQLite; supabase: real PostgreSQL, PostgREST and Storage), with
real flow runs, the real Replicate client and the fake Replicate API:

1. a CLI run (`video-generator run`, a subprocess) of a 6-clip job (veo-3.1, 4 s, text only; every
   prediction takes 1 s) is killed with SIGKILL as soon as its first prediction exists: it leaves leases on
   the clips it was working, predictions running on the fake, and intents whose create may or may not have
   made one (a kill in the middle of a create);
2. three in-process runs of the same job start at once, in threads, right after the kill. Their store
   starts the outages when they reach them, however long they took to start: the prediction list answers
   500 for a few seconds from the first run's start, and again from the intent of the clip the CLI had not
   reached, whose create is made but its answer lost (so a lost create is unresolved at first); clip
   uploads fail for a few seconds from the first upload. Clip 2's first generation fails ("GPU worker
   lost": transient, not the content).
   The runs wait for the dead run's leases to expire, take its clips over, and wait for one another;
3. when they have all ended, one plain run (no faults) lets every clip finish.

Then, from the fake's own records and the store's ledger: each clip has exactly one prediction plus one per
failed generation scripted for it; every clip is delivered, or failed with its reason, in every run; nothing
of the job is left running; and the ledger's spend, the result's `spent_all_runs` and each clip's cost add
up to what the fake billed. A failing assertion prints the timeline, each clip's predictions and ledger
rows, and each run's clips.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from benchmarks.common import clip_marker
from clipgen import events
from clipgen.backends import close_quietly, open_store, register_store
from clipgen.job import ClipPrompts, Clips, GenerationOptions
from clipgen.planning import plan_job
from clipgen.prediction_states import NOT_BILLED
from clipgen.references import resolve_reference
from clipgen.settings import Settings
from clipgen.stores.base import VIDEO_BUCKET, ClipStore, PredictionRecord, StoredObject
from clipgen.stores.local import LocalStore
from clipgen.stores.supabase import SupabaseStore
from flows.video_generator import generate_video_clips
from staging.fake_replicate.server import FakeReplicateServer, Fault

TOKEN = "paid-work-chaos-token"
MODEL = "veo-3.1"
CLIPS = 6
OPTIONS = GenerationOptions(model=MODEL, min_success=1)
LATENCY_S = 1.0  # every prediction of the job: the killed run's are still running when it dies
LEASE_S = 3  # a dead run's clips are taken over this long after its last renewal
LIST_DOWN_S = 6.0  # the prediction list answers 500 for this long, each time it goes down
STORAGE_DOWN_S = 4.0  # clip uploads fail for this long from the first upload of a concurrent run
CONCURRENT_RUNS = 3
FAILED_CLIP = 2  # its first prediction fails with a transient error
# The clip whose create is made and its answer lost: one the killed run never asked for (it works 5 of the 6
# clips at once, in no set order), chosen after the kill from its ledger (Outages.lost_clip).
FAILED_GENERATIONS = {FAILED_CLIP: 1}
LOST_CREATE_UNRESOLVED = "cannot tell whether a lost create made a prediction"
CLI_START_S = 120.0  # the CLI imports Prefect and starts a flow run before it creates anything
RUNS_TIMEOUT_S = 150.0
SETTLE_S = 5.0
RUNNING = frozenset({"starting", "processing"})
# The store the concurrent runs open: the real one, which starts the outages when the runs reach them.
CHAOS_STORES = {"local": "paid-work-chaos-local", "supabase": "paid-work-chaos-supabase"}


class Outages:
    """Outages started by what the concurrent runs do (each flow run opens its own store), so that they
    hit the runs' work however long the runs took to start. Each trigger fires once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[str, Callable[[], None]] = {}
        self.started: dict[str, float] = {}  # trigger -> when it fired (time.monotonic())
        self.storage_until = 0.0  # clip uploads of the local store fail until then (time.monotonic())
        self.lost_clip = -1  # see above

    def arm(self, **triggers: Callable[[], None]) -> None:
        with self._lock:
            self._armed, self.started = dict(triggers), {}

    def fire(self, trigger: str) -> None:
        with self._lock:
            start = self._armed.pop(trigger, None)
            if start is not None:
                self.started[trigger] = time.monotonic()
                start()

    def reset(self) -> None:
        with self._lock:
            self._armed, self.storage_until = {}, 0.0

    @property
    def storage_down(self) -> bool:
        return time.monotonic() < self.storage_until


OUTAGES = Outages()


class ChaosLocalStore(LocalStore):
    """The real local store; clip uploads fail (connection reset) while the storage outage lasts."""

    def reserve_prediction(self, record: PredictionRecord, budget_usd: float | None) -> bool:
        if record.clip_index == OUTAGES.lost_clip:
            OUTAGES.fire("lost create")
        return super().reserve_prediction(record, budget_usd)

    def put_object(self, bucket: str, path: str, source: Path, content_type: str) -> StoredObject:
        if bucket == VIDEO_BUCKET:
            OUTAGES.fire("first upload")
            if OUTAGES.storage_down:
                raise ConnectionResetError(f"scripted storage outage writing {bucket}/{path}")
        return super().put_object(bucket, path, source, content_type)


class ChaosSupabaseStore(SupabaseStore):
    """The real Supabase store; the storage outage is the gateway's, in front of the real Storage."""

    def reserve_prediction(self, record: PredictionRecord, budget_usd: float | None) -> bool:
        if record.clip_index == OUTAGES.lost_clip:
            OUTAGES.fire("lost create")
        return super().reserve_prediction(record, budget_usd)

    def put_object(self, bucket: str, path: str, source: Path, content_type: str) -> StoredObject:
        if bucket == VIDEO_BUCKET:
            OUTAGES.fire("first upload")
        return super().put_object(bucket, path, source, content_type)


def _chaos_local(settings: Settings) -> ClipStore:
    OUTAGES.fire("run started")
    return ChaosLocalStore(settings.data_dir)


def _chaos_supabase(settings: Settings) -> ClipStore:
    OUTAGES.fire("run started")
    return ChaosSupabaseStore.from_settings(settings)


register_store(CHAOS_STORES["local"], _chaos_local)
register_store(CHAOS_STORES["supabase"], _chaos_supabase)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token=TOKEN, latency_s=0.2) as server:
        yield server


@pytest.fixture(autouse=True)
def replicate_env(fake: FakeReplicateServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The killed CLI inherits these: its environment is a copy of this process's.
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    monkeypatch.setenv("VIDEO_GENERATOR_PREDICTION_LIMIT", "")
    monkeypatch.setenv("VIDEO_GENERATOR_CLIP_LEASE_SECONDS", str(LEASE_S))
    monkeypatch.setenv("VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS", "0.05")
    fake.clear_faults()
    yield
    fake.clear_faults()
    OUTAGES.reset()


@dataclass
class Chaos:
    """What the scenario saw: for the assertions, and for the report when one fails."""

    job: ClipPrompts
    tag: str
    store: str
    cli_log: Path
    began: float = field(default_factory=time.monotonic)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    killed_with: list[str] = field(default_factory=list)  # the job's predictions on the fake at the kill
    killed_ledger: list[tuple[str, str]] = field(default_factory=list)  # the ledger then
    concurrent: list[Any] = field(default_factory=list)  # flow states, or what a run raised
    unfired: list[Fault] = field(default_factory=list)  # scripted faults left when the runs ended
    final: Any = None

    def note(self, what: str, at: float | None = None) -> None:
        self.timeline.append((round((at or time.monotonic()) - self.began, 2), what))


def make_job() -> tuple[ClipPrompts, str]:
    tag = uuid4().hex[:12]
    prompts = [
        {"clip_index": i, "prompt": f"{clip_marker(tag, i)} a paper boat on a rainy street", "duration": 4.0}
        for i in range(CLIPS)
    ]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts}), tag


def made(fake: FakeReplicateServer, tag: str, clip: int | None = None) -> list[dict[str, Any]]:
    """The job's predictions on the fake (of one clip), by the text their prompts carry."""
    text = tag if clip is None else clip_marker(tag, clip)
    return [p for p in fake.predictions if text in str((p.get("input") or {}).get("prompt", ""))]


def of_clip(predictions: list[dict[str, Any]], tag: str, clip: int) -> list[dict[str, Any]]:
    return [p for p in predictions if clip_marker(tag, clip) in str(p["input"].get("prompt", ""))]


def run(job: ClipPrompts, store: str) -> Any:
    return generate_video_clips(job, OPTIONS, provider="replicate", store=store, return_state=True)


def result_of(state: Any) -> Clips:
    result = state.result(raise_on_failure=False)
    assert isinstance(result, Clips), result
    return result


def ledger(job: ClipPrompts, store_name: str) -> list[PredictionRecord]:
    store = open_store(store_name, Settings())
    try:
        return store.predictions(job.job_id)
    finally:
        close_quietly(store)


def clip_errors(job: ClipPrompts, store_name: str, clip: int) -> list[str]:
    """Every error the job's log reports for one clip: failed attempts that were retried, and failed clips."""
    store = open_store(store_name, Settings())
    try:
        log = store.events(job.job_id)
    finally:
        close_quietly(store)
    return [
        str(e.data.get("error"))
        for e in log
        if e.event in (events.RETRY, events.PROGRESS)
        and e.data.get("clip_index") == clip
        and e.data.get("error")
    ]


def clip_price(job: ClipPrompts) -> float:
    """The estimate of one clip (every clip of the job has the same plan shape)."""
    resolver = functools.partial(resolve_reference, cache_dir=Settings().reference_cache_dir)
    [price] = {clip.estimated_cost for clip in plan_job(job, OPTIONS, resolver).clips}
    assert price > 0
    return price


def settled(fake: FakeReplicateServer, tag: str) -> list[dict[str, Any]]:
    """The job's predictions once none is running, or after SETTLE_S (cancels may still be landing)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        predictions = made(fake, tag)
        if not any(p["status"] in RUNNING for p in predictions) or time.monotonic() >= deadline:
            return predictions
        time.sleep(0.05)


# --- the killed CLI run ---------------------------------------------------------------------------------


def start_cli(job: ClipPrompts, store: str, workdir: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """`video-generator run` of the job, in a session of its own, so its process group can be killed."""
    from prefect.settings import PREFECT_API_URL

    job_file = workdir / "job.json"
    job_file.write_text(job.model_dump_json())
    cli = Path(sys.executable).with_name("video-generator")
    command = [str(cli), "run", str(job_file), "--provider", "replicate", "--model", MODEL]
    command += ["--store", store, "--min-success", "1"]
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    with open(log_file, "wb") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for_first_prediction(
    process: subprocess.Popen[bytes], fake: FakeReplicateServer, tag: str, log_file: Path
) -> None:
    deadline = time.monotonic() + CLI_START_S
    while not made(fake, tag):
        if process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the CLI ended (exit {process.returncode}) before the kill:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the CLI made no prediction in {CLI_START_S:g} s")
        time.sleep(0.005)


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the CLI and any children
    process.wait()


# --- the scenario ---------------------------------------------------------------------------------------


def arm_outages(request: pytest.FixtureRequest, fake: FakeReplicateServer, store: str) -> None:
    """The list down for LIST_DOWN_S when the first concurrent run starts and when the lost clip's create is
    about to be lost; clip uploads failing for STORAGE_DOWN_S from the first one."""

    def list_down() -> None:
        fake.add_fault(Fault(kind="list_error", status=500, times=-1, lasts_s=LIST_DOWN_S))

    if store == "local":

        def storage_down() -> None:
            OUTAGES.storage_until = time.monotonic() + STORAGE_DOWN_S

    else:
        storage = request.getfixturevalue("supabase_env").storage
        timer = threading.Timer(STORAGE_DOWN_S, storage.clear_faults)
        timer.daemon = True
        request.addfinalizer(timer.cancel)
        request.addfinalizer(storage.clear_faults)

        def storage_down() -> None:
            # Every clip upload answers 503 (the gateway's, before Storage) until the timer ends the outage.
            storage.fail_next(10**6, status=503, bucket=VIDEO_BUCKET, operation="upload")
            timer.start()

    OUTAGES.arm(**{"run started": list_down, "lost create": list_down, "first upload": storage_down})


def run_chaos(request: pytest.FixtureRequest, fake: FakeReplicateServer, store: str, tmp_path: Path) -> Chaos:
    job, tag = make_job()
    chaos = Chaos(job, tag, store, tmp_path / "cli.log")
    fake.add_fault(
        Fault(kind="latency", match=tag, times=-1, seconds=LATENCY_S),
        Fault(kind="fail", match=clip_marker(tag, FAILED_CLIP), times=1, error="GPU worker lost"),
    )
    arm_outages(request, fake, store)

    def one_run() -> None:
        try:
            state = run(job, CHAOS_STORES[store])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions, not lost in a thread
            state = exc
        chaos.concurrent.append(state)
        chaos.note(f"a concurrent run ended: {getattr(state, 'name', None) or repr(state)}")

    threads = [threading.Thread(target=one_run, name=f"chaos-run-{i}") for i in range(CONCURRENT_RUNS)]
    process = start_cli(job, store, tmp_path, chaos.cli_log)
    chaos.note("CLI started")
    try:
        wait_for_first_prediction(process, fake, tag, chaos.cli_log)
    finally:
        kill(process)
    chaos.note("CLI killed")
    chaos.killed_with = [p["id"] for p in made(fake, tag)]
    rows = ledger(job, store)
    chaos.killed_ledger = [(r.prediction_id, r.status) for r in rows]
    # A clip the CLI wrote nothing for: it never sent its create (the intent is written before the create
    # leaves). It works 5 clips at once, 1 s each, so one is left. A concurrent run's create of it is lost.
    never_asked = set(range(CLIPS)) - {r.clip_index for r in rows}
    OUTAGES.lost_clip = max(never_asked - {FAILED_CLIP} or never_asked)  # one fault per clip where it can
    fake.add_fault(Fault(kind="reset_after_create", match=clip_marker(tag, OUTAGES.lost_clip), times=1))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RUNS_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), f"runs still going after {RUNS_TIMEOUT_S:g} s"
    for trigger, at in OUTAGES.started.items():
        chaos.note(f"outage started: {trigger}", at)

    chaos.unfired = [f for f in fake.faults if f.kind not in ("latency", "list_error")]
    fake.clear_faults()
    OUTAGES.reset()
    if store == "supabase":
        request.getfixturevalue("supabase_env").storage.clear_faults()
    chaos.final = run(job, store)
    chaos.note("final run ended")
    return chaos


def report(chaos: Chaos, predictions: list[dict[str, Any]], rows: list[PredictionRecord]) -> str:
    """The timeline; per clip, the fake's predictions and the ledger's rows; per run, each clip's outcome."""
    lines = [f"job {chaos.job.job_id} (tag {chaos.tag}), store {chaos.store}"]
    lines += [f"  {at:6.2f} s  {what}" for at, what in sorted(chaos.timeline)]
    lines.append(f"the killed run's ledger: {chaos.killed_ledger}")
    for index in range(CLIPS):
        lines.append(f"clip {index}:")
        for p in of_clip(predictions, chaos.tag, index):
            lines.append(
                f"  fake {p['id']} {p['status']} billed={p['billed']} faults={p['faults']} "
                f"cancels={p['cancel_requests']} downloads={p['downloads']}"
                + (" (the killed run's)" if p["id"] in chaos.killed_with else "")
            )
        lines += [
            f"  ledger {r.prediction_id} {r.status} cost={r.cost} run={r.run_id} {r.error or ''}"
            for r in rows
            if r.clip_index == index
        ]
    runs = [*((f"concurrent run {i}", s) for i, s in enumerate(chaos.concurrent)), ("final run", chaos.final)]
    for name, state in runs:
        result = (
            None
            if state is None or isinstance(state, BaseException)
            else state.result(raise_on_failure=False)
        )
        if not isinstance(result, Clips):
            lines.append(f"{name}: {state!r} -> {result!r}")
            continue
        lines.append(f"{name}: {state.name}, spent this run {result.spent_this_run}")
        lines += [
            f"  clip {c.clip_index} {c.status} reused={c.reused} cost={c.cost} "
            f"thumbnail={bool(c.thumbnail_url)} predictions={c.prediction_ids} {c.error or ''}"
            for c in result.clips
        ]
    cli = chaos.cli_log.read_text(errors="replace") if chaos.cli_log.is_file() else ""
    lines.append("the killed CLI's output (tail):\n" + cli[-1500:])
    return "\n".join(lines)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("store", ["local", "supabase"])
def test_runs_of_one_job_through_faults_and_a_kill_pay_once_per_clip(
    request: pytest.FixtureRequest, fake: FakeReplicateServer, store: str, tmp_path: Path
) -> None:
    chaos = run_chaos(request, fake, store, tmp_path)

    predictions = settled(fake, chaos.tag)
    rows = ledger(chaos.job, store)
    why = report(chaos, predictions, rows)
    # The scenario happened: the CLI died with the job's predictions made, every fault fired, and the lost
    # create was unresolved at first (the list was down): an attempt of the lost clip failed for it. The
    # failed generation may not come: when the killed CLI left an unanswered create for its clip, every
    # attempt may wait for the list until the faults are cleared for the final run.
    assert chaos.killed_with and [f.kind for f in chaos.unfired if f.kind != "fail"] == [], why
    failed_generations = {} if chaos.unfired else FAILED_GENERATIONS
    assert len(chaos.concurrent) == CONCURRENT_RUNS, why
    assert not [state for state in chaos.concurrent if isinstance(state, BaseException)], why
    # The storage outage starts at a concurrent run's first clip upload, which may not come: when the killed
    # CLI left every clip it worked with an unanswered create, the concurrent runs can spend all their
    # attempts waiting for the list (down twice) and fail every clip before uploading any.
    delivered = any(c.status == "success" for state in chaos.concurrent for c in result_of(state).clips)
    assert {"run started", "lost create"} <= set(OUTAGES.started), why
    assert "first upload" in OUTAGES.started or not delivered, why
    lost_create = clip_errors(chaos.job, store, OUTAGES.lost_clip)
    assert any(LOST_CREATE_UNRESOLVED in error for error in lost_create), f"{lost_create}\n{why}"
    results = [result_of(state) for state in [*chaos.concurrent, chaos.final]]
    assert all([c.clip_index for c in result.clips] == list(range(CLIPS)) for result in results), why

    # Exactly one prediction per clip, plus one per failed generation scripted for it: nothing paid twice.
    expected = [1 + failed_generations.get(index, 0) for index in range(CLIPS)]
    assert [len(of_clip(predictions, chaos.tag, index)) for index in range(CLIPS)] == expected, why

    # Every clip delivered or failed with its reason, in every run; the plain run at the end delivers all.
    for result in results:
        assert all(c.status == "success" or (c.status == "failed" and c.error) for c in result.clips), why
    last = results[-1]
    assert [c.status for c in last.clips] == ["success"] * CLIPS, why

    # Nothing of the job left running, on the fake or on the ledger; the ledger knows every prediction the
    # fake made for the job, and no other.
    assert [p["id"] for p in predictions if p["status"] in RUNNING] == [], why
    assert [r.prediction_id for r in rows if r.status in ("intended", "created")] == [], why
    assert sorted(r.prediction_id for r in rows if r.status not in NOT_BILLED) == sorted(
        p["id"] for p in predictions
    ), why

    # Costs add up to the fake's own count.
    price = clip_price(chaos.job)
    billed = [p for p in predictions if p["billed"]]
    assert sum(r.cost for r in rows if r.status not in NOT_BILLED) == pytest.approx(len(billed) * price), why
    assert last.spent_all_runs == pytest.approx(len(billed) * price), why
    for clip in last.clips:
        assert clip.cost == pytest.approx(len(of_clip(billed, chaos.tag, clip.clip_index)) * price), why
