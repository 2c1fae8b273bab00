"""Paid work has one owner (issue 13): the state machine on its own, then real flow runs against the fake
Replicate API through the real client: nothing paid twice or lost, across reruns, concurrent runs, dead
runs, lost creates, list and storage outages; costs that add up to the fake's own count."""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import replicate

from clipgen.backends import register_store
from clipgen.job import ClipPrompts, Clips, GenerationOptions
from clipgen.model_inputs import build_request
from clipgen.paid_work import JobWork
from clipgen.pipeline import Attempt, produce_clip
from clipgen.plan_fingerprint import plan_fingerprint
from clipgen.planning import ClipPlan, plan_job
from clipgen.prediction_states import IllegalTransition, advance, ended_status, reachable
from clipgen.providers.replicate import ReplicateProvider
from clipgen.references import resolve_reference
from clipgen.settings import Settings
from clipgen.stores.base import VIDEO_BUCKET, PredictionRecord
from clipgen.stores.local import LocalStore
from flows.video_generator import generate_video_clips
from staging.fake_replicate.server import FakeReplicateServer, Fault
from tests.conftest import EXAMPLE_JOB
from tests.doubles import FlakyUploadStore

IMAGES = EXAMPLE_JOB.parent / "images"

TOKEN = "paid-work-token"
OPTIONS = GenerationOptions(model="veo-3.1")
STORAGE_DOWN = "paid-work-storage-down"

register_store(STORAGE_DOWN, lambda settings: FlakyUploadStore(settings.data_dir, VIDEO_BUCKET, 10**6))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token=TOKEN, latency_s=0.3) as server:
        yield server


@pytest.fixture(autouse=True)
def replicate_env(fake: FakeReplicateServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    monkeypatch.setenv("VIDEO_GENERATOR_PREDICTION_LIMIT", "")
    fake.clear_faults()


def make_job(n: int) -> tuple[ClipPrompts, str]:
    tag = uuid4().hex
    prompts = [{"clip_index": i, "prompt": f"{tag} clip {i}", "duration": 4.0} for i in range(n)]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts}), tag


def plans(job: ClipPrompts, options: GenerationOptions = OPTIONS) -> list[ClipPlan]:
    resolver = functools.partial(resolve_reference, cache_dir=Settings().reference_cache_dir)
    return plan_job(job, options, resolver).clips


def made(fake: FakeReplicateServer, text: str) -> list[dict[str, Any]]:
    return [p for p in fake.predictions if text in str(p["input"].get("prompt", ""))]


def per_clip(fake: FakeReplicateServer, tag: str, n: int) -> list[int]:
    return [len(made(fake, f"{tag} clip {i}")) for i in range(n)]


def run(
    job: ClipPrompts, options: GenerationOptions = OPTIONS, provider: str = "replicate", store: str = "local"
) -> Any:
    return generate_video_clips(job, options, provider=provider, store=store, return_state=True)


def result_of(state: Any) -> Clips:
    result = state.result(raise_on_failure=False)
    assert isinstance(result, Clips), result
    return result


def store() -> LocalStore:
    return LocalStore(Settings().data_dir)


def ledger(job: ClipPrompts) -> list[PredictionRecord]:
    return store().predictions(job.job_id)


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
            plan_fingerprint=fingerprint or plan_fingerprint(plan, "replicate"),
            run_id=run_id,
            cost=plan.estimated_cost,
        )
    )
    return prediction.id


def settled(fake: FakeReplicateServer, tag: str) -> None:
    """Nothing of the job is still running on the fake."""
    running = [p["id"] for p in made(fake, tag) if p["status"] in ("starting", "processing")]
    assert running == []


# --- the state machine ----------------------------------------------------------------------------------


def test_prediction_states_only_move_forward() -> None:
    assert reachable("intended") == {
        "void", "created", "succeeded", "delivered", "rejected", "abandoned", "failed", "canceled"
    }  # fmt: skip
    assert reachable("created") == {"succeeded", "delivered", "rejected", "abandoned", "failed", "canceled"}
    assert reachable("delivered") == frozenset()
    assert advance("created", "delivered") == "delivered"  # succeeded on the way: one write
    assert advance("succeeded", "succeeded") == "succeeded"  # a repeated write
    for current, new in [("delivered", "created"), ("void", "created"), ("canceled", "succeeded")]:
        with pytest.raises(IllegalTransition):
            advance(current, new)  # type: ignore[arg-type]


def test_how_a_provider_end_is_recorded() -> None:
    assert ended_status("succeeded", wanted=True) == "succeeded"  # adoptable until its output expires
    assert ended_status("succeeded", wanted=False) == "abandoned"
    assert ended_status("gone", wanted=True) == "abandoned"
    assert ended_status("aborted", wanted=True) == "canceled"
    assert ended_status("failed", wanted=True) == "failed"


# --- reruns and dead runs -------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_server")
def test_rerunning_a_finished_job_makes_no_paid_call(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    first = result_of(run(job))
    assert first.successful_clips == 3 and len(made(fake, tag)) == 3

    again = result_of(run(job))

    assert again.successful_clips == 3 and all(clip.reused for clip in again.clips)
    assert len(made(fake, tag)) == 3  # nothing created the second time
    assert [c.cost for c in again.clips] == [c.cost for c in first.clips]
    assert [c.metadata for c in again.clips] == [c.metadata for c in first.clips]
    assert (again.spent_this_run, again.spent_all_runs) == (0.0, first.spent_this_run)
    assert [p.status for p in ledger(job)] == ["delivered"] * 3


@pytest.mark.usefixtures("prefect_server")
def test_a_run_after_a_crash_adopts_what_the_dead_run_paid_for(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    clip_plans = plans(job)
    adopted = [create_directly(fake, clip_plans[i], run_id="dead-run") for i in (0, 1)]

    result = result_of(run(job))

    assert result.successful_clips == 3 and per_clip(fake, tag, 3) == [1, 1, 1]
    assert [c.prediction_id for c in result.clips[:2]] == adopted
    assert {r.prediction_id: r.status for r in ledger(job)} == {
        **dict.fromkeys(adopted, "delivered"),
        result.clips[2].prediction_id: "delivered",
    }
    # The adopted ones are on the bill of the run that paid for them, not of this one.
    price = clip_plans[0].estimated_cost
    assert (result.spent_this_run, result.spent_all_runs) == (pytest.approx(price), pytest.approx(3 * price))


@pytest.mark.usefixtures("prefect_server")
def test_predictions_no_clip_will_use_are_canceled_at_the_start(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    assert result_of(run(job)).successful_clips == 3
    clip_plans = plans(job)
    fake.add_fault(Fault(kind="hang", match=tag, times=-1))
    duplicate = create_directly(fake, clip_plans[0], run_id="dead-run")  # clip 0 is stored already
    other_plan = create_directly(fake, clip_plans[1], run_id="dead-run", fingerprint="another-plan")

    assert run(job).is_completed()

    statuses = {p["id"]: p["status"] for p in fake.predictions}
    assert (statuses[duplicate], statuses[other_plan]) == ("canceled", "canceled")
    rows = {r.prediction_id: r.status for r in ledger(job)}
    assert (rows[duplicate], rows[other_plan]) == ("canceled", "canceled")


class Died(BaseException):
    """kill -9: nothing after it runs, not even the attempt's own failure handling."""


class DiesAtTheLedgerWrite(LocalStore):
    """The real local store, in a process killed between Replicate's answer to a create and the ledger write.
    It notes what the ledger said at that moment."""

    said: list[str]

    def resolve_intent(self, intent_id: str, record: PredictionRecord) -> None:
        self.said = [p.status for p in self.predictions(record.job_id)]
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
            work = JobWork(dying, first, owner="machine-a", lease_seconds=2.0).clip(plan)
            produce_clip(plan, first, work, tmp_path / "machine-a", Attempt(1, 3))
    finally:
        first.close()
    assert len(made(fake, tag)) == 1 and dying.said == ["intended"]  # the intent was on record

    second = ReplicateProvider.from_settings(settings)  # another worker: its own process and work directory
    try:
        work = JobWork(store(), second, owner="machine-b", lease_seconds=2.0).clip(plan)
        clip = produce_clip(plan, second, work, tmp_path / "machine-b", Attempt(1, 3))
    finally:
        second.close()

    [prediction] = made(fake, tag)  # nothing paid twice
    assert clip.status == "success" and clip.prediction_id == prediction["id"]
    assert clip.cost == plan.estimated_cost  # the adopted prediction is on the bill, once
    [row] = ledger(job)
    assert (row.prediction_id, row.status) == (prediction["id"], "delivered")


# --- the numbered defects of issue 13 -------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_server")
def test_1_a_preview_never_stands_in_for_a_paid_clip_nor_the_other_way_round(
    fake: FakeReplicateServer,
) -> None:
    job, tag = make_job(3)
    preview = result_of(run(job, provider="local"))
    assert preview.successful_clips == 3 and all(c.metadata.get("preview") for c in preview.clips)

    paid = result_of(run(job))

    assert per_clip(fake, tag, 3) == [1, 1, 1]
    assert not any(c.reused or c.metadata.get("preview") for c in paid.clips)
    assert paid.total_cost == pytest.approx(paid.spent_this_run) and paid.total_cost > 0

    back = result_of(run(job, provider="local"))
    assert not any(c.reused for c in back.clips) and back.total_cost == back.spent_this_run == 0.0
    again = result_of(run(job, provider="local"))
    assert all(c.reused and c.metadata.get("preview") is True for c in again.clips)  # metadata kept
    assert again.total_cost == 0.0 and len(made(fake, tag)) == 3


@pytest.mark.usefixtures("prefect_server")
def test_2_two_runs_of_one_job_at_once_pay_once_per_clip(fake: FakeReplicateServer) -> None:
    job, tag = make_job(6)
    fake.add_fault(Fault(kind="latency", match=tag, times=-1, seconds=1.5))
    states: list[Any] = []
    runs = [threading.Thread(target=lambda: states.append(run(job))) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(timeout=300)

    assert len(states) == 2 and all(state.is_completed() for state in states)
    assert per_clip(fake, tag, 6) == [1] * 6
    results = [result_of(state) for state in states]
    assert all(r.successful_clips == 6 for r in results)
    # Every clip was made by one run and reused by the other; nobody canceled what the other waited on.
    assert sorted(sum(c.reused for c in r.clips) for r in results) in ([0, 6], [1, 5], [2, 4], [3, 3])
    assert [p.status for p in ledger(job)] == ["delivered"] * 6
    assert sum(r.spent_this_run for r in results) == pytest.approx(results[0].spent_all_runs)
    settled(fake, tag)


@pytest.mark.usefixtures("prefect_server")
def test_3_a_lost_create_is_resolved_never_guessed(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    options = OPTIONS.model_copy(update={"min_success": 2})
    fake.add_fault(
        Fault(kind="reset_after_create", match=f"{tag} clip 0", times=1),
        Fault(kind="list_error", status=500, times=-1),
    )

    first = result_of(run(job, options))

    # The create made a prediction but its answer was lost, and the list could not be read: every attempt
    # of clip 0 failed without paying again, and the intent stayed on the ledger (reserved, unbilled).
    assert per_clip(fake, tag, 3) == [1, 1, 1]
    assert first.clips[0].status == "failed" and "lost create" in (first.clips[0].error or "")
    assert [p.status for p in ledger(job) if p.clip_index == 0] == ["intended"]
    fake.clear_faults()

    again = result_of(run(job, options))

    [lost] = made(fake, f"{tag} clip 0")
    assert per_clip(fake, tag, 3) == [1, 1, 1] and again.successful_clips == 3
    assert again.clips[0].prediction_id == lost["id"] and again.clips[0].cost == plans(job)[0].estimated_cost
    assert {p.prediction_id: p.status for p in ledger(job) if p.clip_index == 0} == {lost["id"]: "delivered"}
    assert again.spent_all_runs == pytest.approx(sum(c.cost for c in again.clips))


@pytest.mark.usefixtures("prefect_server")
def test_4_a_succeeded_but_unstored_prediction_is_downloaded_again_not_repaid(
    fake: FakeReplicateServer,
) -> None:
    job, tag = make_job(4)
    first = result_of(run(job, store=STORAGE_DOWN))
    assert first.successful_clips == 0 and per_clip(fake, tag, 4) == [1] * 4
    assert [p.status for p in ledger(job)] == ["succeeded"] * 4  # adoptable by any worker
    shutil.rmtree(Settings().work_dir)  # the next run is on another worker: no local copies

    again = result_of(run(job))

    assert again.successful_clips == 4 and per_clip(fake, tag, 4) == [1] * 4
    assert [p.status for p in ledger(job)] == ["delivered"] * 4
    assert again.spent_this_run == 0.0 and again.total_cost == pytest.approx(first.spent_this_run)


@pytest.mark.usefixtures("prefect_server")
def test_5_a_clip_that_failed_for_good_is_not_paid_again_unless_asked(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    options = OPTIONS.model_copy(update={"min_success": 2})
    fake.add_fault(Fault(kind="fail", match=f"{tag} clip 0", times=1, error="flagged as sensitive (E005)"))
    first = result_of(run(job, options))
    assert first.clips[0].status == "failed" and per_clip(fake, tag, 3) == [1, 1, 1]

    again = result_of(run(job, options))

    assert per_clip(fake, tag, 3) == [1, 1, 1]  # not paid again
    assert again.clips[0].status == "failed" and "E005" in (again.clips[0].error or "")
    assert "--retry-failed" in (again.clips[0].error or "") and again.spent_this_run == 0.0

    asked = result_of(run(job, options.model_copy(update={"retry_failed": True})))
    assert asked.clips[0].status == "success" and per_clip(fake, tag, 3) == [2, 1, 1]


@pytest.mark.usefixtures("prefect_server")
def test_8_costs_are_per_plan_and_this_run_is_told_apart(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    hailuo = result_of(run(job, OPTIONS.model_copy(update={"model": "hailuo-2.3"})))
    veo = result_of(run(job))

    hailuo_price, veo_price = hailuo.clips[0].cost, veo.clips[0].cost
    assert hailuo_price > 0 and veo_price > 0 and hailuo_price != veo_price
    assert [c.cost for c in veo.clips] == [veo_price] * 3  # this plan's predictions only
    assert veo.total_cost == pytest.approx(3 * veo_price) == pytest.approx(veo.spent_this_run)
    assert veo.spent_all_runs == pytest.approx(3 * (hailuo_price + veo_price))

    preview = result_of(run(job, provider="local"))
    assert preview.total_cost == preview.spent_this_run == 0.0
    assert preview.spent_all_runs == pytest.approx(veo.spent_all_runs)
    assert len(made(fake, tag)) == 6


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

    result = result_of(run(job, options))

    assert result.successful_clips == 2 and result.clips[2].status == "failed"
    statuses = {p["id"]: p["status"] for p in made(fake, tag)}
    assert (statuses[older], statuses[newer]) == ("canceled", "canceled")
    settled(fake, tag)
    assert not any(r.status in ("created", "intended") for r in ledger(job))
    assert datetime.now(UTC) > min(r.created_at for r in ledger(job) if r.created_at)


def test_a_file_reference_changed_in_place_changes_the_plan(tmp_path: Path) -> None:
    """A worker that allows file references reads them in place: the same path with other bytes is another
    plan, even in a long-running worker that fingerprinted it before, so the old clips are not reused."""
    scene = tmp_path / "scene.png"
    shutil.copyfile(IMAGES / "ada.png", scene)
    [plan] = plans(make_job(1)[0])
    plan = plan.model_copy(update={"scene_image": str(scene)})
    before = plan_fingerprint(plan, "replicate")
    assert plan_fingerprint(plan, "replicate") == before
    shutil.copyfile(IMAGES / "ben.png", scene)
    assert plan_fingerprint(plan, "replicate") != before
