"""The prediction ledger, on real flow runs against the fake Replicate API through the real client:
nothing paid twice (reruns, runs after a crash), nothing left running (stale predictions, ended runs)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
import replicate

from clipgen import ledger
from clipgen.fake_replicate.server import FakeReplicateServer, Fault
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.model_inputs import build_request
from clipgen.pipeline import Attempt, plan_fingerprint, produce_clip
from clipgen.planning import ClipPlan, plan_job
from clipgen.providers.replicate import ReplicateProvider
from clipgen.references import resolve_reference
from clipgen.settings import Settings
from clipgen.stores.base import PredictionRecord
from clipgen.stores.local import LocalStore
from flows.video_generator import generate_video_clips

TOKEN = "ledger-token"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token=TOKEN, latency_s=0.2) as server:
        yield server


@pytest.fixture(autouse=True)
def replicate_env(fake: FakeReplicateServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    fake.clear_faults()


OPTIONS = GenerationOptions(model="veo-3.1")


def make_job(n: int) -> tuple[ClipPrompts, str]:
    tag = uuid4().hex
    prompts = [{"clip_index": i, "prompt": f"{tag} clip {i}", "duration": 4.0} for i in range(n)]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts}), tag


def plans(job: ClipPrompts) -> list[ClipPlan]:
    resolver = functools.partial(resolve_reference, cache_dir=Settings().reference_cache_dir)
    return plan_job(job, OPTIONS, resolver).clips


def predictions_for(fake: FakeReplicateServer, text: str) -> list[dict[str, object]]:
    return [p for p in fake.predictions if text in str(p["input"].get("prompt", ""))]  # type: ignore[union-attr]


def run(job: ClipPrompts) -> object:
    return generate_video_clips(job, OPTIONS, provider="replicate", store="local", return_state=True)


def store() -> LocalStore:
    return LocalStore(Settings().data_dir)


def create_directly(
    fake: FakeReplicateServer, plan: ClipPlan, run_id: str, fingerprint: str | None = None
) -> str:
    """What a run that died right after creating a prediction leaves: the prediction, and its ledger row."""
    request = build_request(plan, lambda path, ratio, size: path)
    client = replicate.Client(api_token=TOKEN, base_url=fake.base_url)
    try:
        prediction = client.models.predictions.create(model=request.model, input=request.input)
    finally:
        client._client.close()  # the client has no close of its own
    store().record_prediction(
        PredictionRecord(
            prediction_id=prediction.id,
            job_id=plan.job_id,
            clip_index=plan.clip_index,
            provider="replicate",
            model=plan.model,
            plan_fingerprint=fingerprint or plan_fingerprint(plan),
            run_id=run_id,
            cost=plan.estimated_cost,
        )
    )
    return prediction.id


@pytest.mark.usefixtures("prefect_server")
def test_rerunning_a_finished_job_makes_no_paid_call(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    first = run(job).result()  # type: ignore[attr-defined]
    assert first.successful_clips == 3 and len(predictions_for(fake, tag)) == 3

    again = run(job)

    result = again.result()  # type: ignore[attr-defined]
    assert again.is_completed() and result.successful_clips == 3  # type: ignore[attr-defined]
    assert len(predictions_for(fake, tag)) == 3  # nothing created the second time
    assert all(clip.reused for clip in result.clips)
    assert [c.cost for c in result.clips] == [c.cost for c in first.clips]
    assert [c.actual_duration for c in result.clips] == [c.actual_duration for c in first.clips]
    assert [p.status for p in store().predictions(job.job_id)] == ["delivered"] * 3


@pytest.mark.usefixtures("prefect_server")
def test_a_run_after_a_crash_adopts_what_the_dead_run_paid_for(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    clip_plans = plans(job)
    adopted = [create_directly(fake, clip_plans[i], run_id="dead-run") for i in (0, 1)]

    result = run(job).result()  # type: ignore[attr-defined]

    assert result.successful_clips == 3
    assert [len(predictions_for(fake, f"{tag} clip {i}")) for i in range(3)] == [1, 1, 1]
    assert [c.prediction_id for c in result.clips[:2]] == adopted
    rows = store().predictions(job.job_id)
    assert {r.prediction_id: r.status for r in rows if r.prediction_id in adopted} == dict.fromkeys(
        adopted, "delivered"
    )


@pytest.mark.usefixtures("prefect_server")
def test_predictions_no_clip_will_use_are_canceled_at_the_start(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    assert run(job).result().successful_clips == 3  # type: ignore[attr-defined]
    clip_plans = plans(job)
    fake.add_fault(Fault(kind="hang", match=tag, times=-1))
    duplicate = create_directly(fake, clip_plans[0], run_id="dead-run")  # clip 0 is stored already
    other_plan = create_directly(fake, clip_plans[1], run_id="dead-run", fingerprint="another-plan")

    again = run(job)

    assert again.is_completed()  # type: ignore[attr-defined]
    statuses = {p["id"]: p["status"] for p in fake.predictions}
    assert (statuses[duplicate], statuses[other_plan]) == ("canceled", "canceled")
    rows = {r.prediction_id: r.status for r in store().predictions(job.job_id)}
    assert (rows[duplicate], rows[other_plan]) == ("canceled", "canceled")


@pytest.mark.usefixtures("prefect_server")
def test_a_run_ends_with_nothing_left_running(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    # Two dead runs each left a hung prediction for clip 2. This run adopts the newer one (and cancels it at
    # the clip's deadline, as every attempt after it); the older one nobody adopts: the run's end stops it.
    clip_plans = plans(job)
    fake.add_fault(Fault(kind="hang", match=f"{tag} clip 2", times=-1))
    older = create_directly(fake, clip_plans[2], run_id="dead-run-1")
    newer = create_directly(fake, clip_plans[2], run_id="dead-run-2")
    options = OPTIONS.model_copy(update={"clip_timeout_s": 1.0, "min_success": 2})

    state = generate_video_clips(job, options, provider="replicate", store="local", return_state=True)

    result = state.result()
    assert result.successful_clips == 2 and result.clips[2].status == "failed"
    statuses = {p["id"]: p["status"] for p in predictions_for(fake, tag)}
    assert "processing" not in statuses.values() and "starting" not in statuses.values(), statuses
    assert (statuses[older], statuses[newer]) == ("canceled", "canceled")
    # Two dead, clips 0 and 1, and clip 2's second and third attempts: the adopted one was its first.
    assert len(statuses) == 2 + 2 + 2
    assert all(r.status != "created" for r in store().predictions(job.job_id))


def test_which_predictions_are_left_for_nobody() -> None:
    job_id, now = uuid4(), datetime.now(UTC)

    def row(
        index: int, fingerprint: str, run_id: str, age_s: float, status: str = "created"
    ) -> PredictionRecord:
        return PredictionRecord.model_validate(
            {
                "prediction_id": uuid4().hex, "job_id": job_id, "clip_index": index, "provider": "replicate",
                "model": "veo-3.1", "plan_fingerprint": fingerprint, "run_id": run_id, "status": status,
                "created_at": now - timedelta(seconds=age_s),
            }
        )  # fmt: skip

    stored_dup = row(0, "a", "old", 60)
    other_plan = row(1, "zzz", "old", 60)
    adoptable = row(1, "b", "old", 60)
    gone_clip = row(7, "h", "old", 60)
    delivered = row(2, "c", "old", 60, status="delivered")
    stale = ledger.stale_at_start(
        [stored_dup, other_plan, adoptable, gone_clip, delivered], {0: "a", 1: "b", 2: "c"}, stored={0}
    )
    assert stale == [stored_dup, other_plan, gone_clip]

    mine = row(1, "b", "me", 1)
    concurrent = row(2, "c", "other", 1)  # opened after this run started: that run may be alive
    left = ledger.left_at_end([adoptable, mine, concurrent, delivered], "me", now - timedelta(seconds=30))
    assert left == [adoptable, mine]


class Died(BaseException):
    """kill -9: nothing after it runs, not even the attempt's own failure handling."""


class DiesAtTheLedgerWrite(LocalStore):
    """The real local store, in a process that is killed between Replicate's answer to a create and the
    ledger write. It notes what the clip's row said at that moment."""

    intents: list[datetime | None]

    def record_prediction(self, record: PredictionRecord) -> None:
        rows = [c for c in self.clip_records(record.job_id) if c.clip_index == record.clip_index]
        self.intents = [c.create_sent_at for c in rows]
        raise Died(record.prediction_id)


def test_a_create_that_died_before_the_ledger_write_is_adopted_on_another_machine(
    fake: FakeReplicateServer, tmp_path: Path
) -> None:
    job, tag = make_job(1)
    [plan] = plans(job)
    settings = Settings()
    dying = DiesAtTheLedgerWrite(settings.data_dir)
    first = ReplicateProvider.from_settings(settings)
    try:
        with pytest.raises(Died):
            produce_clip(plan, first, dying, tmp_path / "machine-a", Attempt(1, 3))
    finally:
        first.close()
    assert len(predictions_for(fake, tag)) == 1 and dying.intents[0] is not None  # the intent was on record
    assert store().predictions(job.job_id) == []  # the ledger never heard of it

    second = ReplicateProvider.from_settings(settings)  # another worker: its own process and work directory
    try:
        clip = produce_clip(plan, second, store(), tmp_path / "machine-b", Attempt(1, 3))
    finally:
        second.close()

    [made] = predictions_for(fake, tag)  # nothing paid twice
    assert clip.status == "success" and clip.prediction_id == made["id"]
    assert clip.cost == plan.estimated_cost  # the adopted prediction is on the bill, once
    [row] = store().predictions(job.job_id)
    assert (row.prediction_id, row.status) == (made["id"], "delivered")
    assert [c.create_sent_at for c in store().clip_records(job.job_id)] == [None]
