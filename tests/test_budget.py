"""The job's budget while it runs: a paid request that would pass it is never created, across retries,
reruns and concurrent runs (real flow runs, the real client against the fake Replicate API). The budget is
the ledger's: every run's paid requests and unanswered creates count against it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest

from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.settings import Settings
from clipgen.stores.local import LocalStore
from flows.video_generator import generate_video_clips
from staging.fake_replicate.server import FakeReplicateServer, Fault

TOKEN = "budget-token"
CLIP_PRICE = 0.80  # veo-3.1, 4 s, audio off


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token=TOKEN, latency_s=0.2) as server:
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


def creates(fake: FakeReplicateServer, tag: str) -> int:
    return sum(tag in str(p["input"].get("prompt", "")) for p in fake.predictions)


def run(job: ClipPrompts, budget: float | None, retry_failed: bool = False) -> Any:
    options = GenerationOptions(model="veo-3.1", min_success=2, budget_usd=budget, retry_failed=retry_failed)
    return generate_video_clips(job, options, provider="replicate", store="local", return_state=True)


def spent(job: ClipPrompts) -> float:
    return sum(p.cost for p in LocalStore(Settings().data_dir).predictions(job.job_id) if p.status != "void")


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("budget", [3 * CLIP_PRICE, None])
def test_a_retry_that_would_pass_the_budget_is_not_paid_for(
    fake: FakeReplicateServer, budget: float | None
) -> None:
    job, tag = make_job(3)
    fake.add_fault(Fault(kind="fail", match=f"{tag} clip 0", times=1, error="GPU worker lost"))

    result = run(job, budget).result()  # type: ignore[attr-defined]

    if budget is None:  # the retry is paid for and delivers
        assert result.successful_clips == 3 and creates(fake, tag) == 4
        return
    assert result.successful_clips == 2 and creates(fake, tag) == 3
    failed = result.clips[0]
    assert failed.status == "failed" and "budget" in (failed.error or "")
    assert failed.retry_count == 1  # the second attempt was refused for good: no third
    spent = sum(p.cost for p in LocalStore(Settings().data_dir).predictions(job.job_id))
    assert spent == pytest.approx(3 * CLIP_PRICE) and spent <= budget + 1e-9


@pytest.mark.usefixtures("prefect_server")
def test_a_rerun_counts_what_earlier_runs_spent(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    fake.add_fault(Fault(kind="fail", match=f"{tag} clip 0", times=-1, error="flagged as sensitive (E005)"))
    first = run(job, 3 * CLIP_PRICE).result()  # type: ignore[attr-defined]
    assert first.successful_clips == 2 and creates(fake, tag) == 3
    fake.clear_faults()

    again = run(job, 3 * CLIP_PRICE, retry_failed=True).result()

    # Clips 1 and 2 are reused; clip 0 would need a fourth prediction the budget has no room for.
    assert [c.reused for c in again.clips] == [False, True, True]
    assert again.clips[0].status == "failed" and "budget" in (again.clips[0].error or "")
    assert creates(fake, tag) == 3


@pytest.mark.usefixtures("prefect_server")
def test_two_runs_at_once_share_one_budget(fake: FakeReplicateServer) -> None:
    job, tag = make_job(4)
    # Every clip's first prediction fails (a transient error): 8 predictions would deliver all 4 clips, and
    # the budget has room for 6, over both runs.
    fake.add_fault(Fault(kind="fail", match=tag, times=4, error="GPU worker lost"))
    fake.add_fault(Fault(kind="latency", match=tag, times=-1, seconds=0.5))
    states: list[Any] = []
    runs = [threading.Thread(target=lambda: states.append(run(job, 6 * CLIP_PRICE))) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(timeout=300)

    assert len(states) == 2
    assert creates(fake, tag) == 6 and spent(job) == pytest.approx(6 * CLIP_PRICE)
    results = [state.result(raise_on_failure=False) for state in states]
    assert all(r.spent_all_runs <= 6 * CLIP_PRICE + 1e-9 for r in results)


@pytest.mark.usefixtures("prefect_server")
def test_an_unanswered_create_keeps_its_reservation(fake: FakeReplicateServer) -> None:
    job, tag = make_job(3)
    # Clip 0's create is made but its answer lost, and the list cannot be read: it may exist, so its price
    # stays reserved. The budget has room for 3: the 3rd clip's create still fits, a 4th would not.
    fake.add_fault(
        Fault(kind="reset_after_create", match=f"{tag} clip 0", times=1),
        Fault(kind="list_error", status=500, times=-1),
    )
    result = run(job, 3 * CLIP_PRICE).result(raise_on_failure=False)

    assert result.successful_clips == 2 and creates(fake, tag) == 3
    rows = LocalStore(Settings().data_dir).predictions(job.job_id)
    assert sorted(p.status for p in rows) == ["delivered", "delivered", "intended"]
    assert spent(job) == pytest.approx(3 * CLIP_PRICE)  # reserved: a 4th create would be refused


@pytest.mark.usefixtures("prefect_server")
def test_the_start_event_carries_the_estimate_and_the_budget(fake: FakeReplicateServer) -> None:
    job, _ = make_job(3)
    run(job, 5.0)
    start = LocalStore(Settings().data_dir).events(job.job_id)[0]
    assert start.event == "video_generation_start"
    assert (start.data["estimated_cost"], start.data["budget_usd"]) == (pytest.approx(3 * CLIP_PRICE), 5.0)
