"""The job's budget while it runs: a paid request that would pass it is never created, across retries and
reruns (real flow runs, the real client against the fake Replicate API)."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest

from clipgen.budget import Budget, BudgetExceeded
from clipgen.fake_replicate.server import FakeReplicateServer, Fault
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.settings import Settings
from clipgen.stores.local import LocalStore
from flows.video_generator import generate_video_clips

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
    fake.clear_faults()


def make_job(n: int) -> tuple[ClipPrompts, str]:
    tag = uuid4().hex
    prompts = [{"clip_index": i, "prompt": f"{tag} clip {i}", "duration": 4.0} for i in range(n)]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts}), tag


def creates(fake: FakeReplicateServer, tag: str) -> int:
    return sum(tag in str(p["input"].get("prompt", "")) for p in fake.predictions)


def run(job: ClipPrompts, budget: float | None) -> object:
    options = GenerationOptions(model="veo-3.1", min_success=2, budget_usd=budget)
    return generate_video_clips(job, options, provider="replicate", store="local", return_state=True)


def test_reservations_are_refused_past_the_limit_and_can_be_given_back() -> None:
    budget = Budget(2.0, spent_usd=0.5)
    budget.reserve(1.0, "clip 0")
    with pytest.raises(BudgetExceeded, match=r"clip 1 needs \$1.00, but \$1.50 of the budget of \$2.00"):
        budget.reserve(1.0, "clip 1")
    budget.release(1.0)
    budget.reserve(1.5, "clip 1")
    assert budget.committed_usd == pytest.approx(2.0)
    Budget(None).reserve(1e9, "anything")


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

    again = run(job, 3 * CLIP_PRICE).result()  # type: ignore[attr-defined]

    # Clips 1 and 2 are reused; clip 0 would need a fourth prediction the budget has no room for.
    assert [c.reused for c in again.clips] == [False, True, True]
    assert again.clips[0].status == "failed" and "budget" in (again.clips[0].error or "")
    assert creates(fake, tag) == 3


@pytest.mark.usefixtures("prefect_server")
def test_the_start_event_carries_the_estimate_and_the_budget(fake: FakeReplicateServer) -> None:
    job, _ = make_job(3)
    run(job, 5.0)
    start = LocalStore(Settings().data_dir).events(job.job_id)[0]
    assert start.event == "video_generation_start"
    assert (start.data["estimated_cost"], start.data["budget_usd"]) == (pytest.approx(3 * CLIP_PRICE), 5.0)
