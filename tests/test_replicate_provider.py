"""The Replicate provider, driven through the real `replicate` client against the fake API over HTTP.

The fake validates every input against the model's published schema (strict: unknown fields are refused)
and renders outputs with the duration and shape the real model would produce. Every generate is given the
real paid work (`JobWork(...).clip(plan)` on a real LocalStore) under the clip's lease, so what a test
asserts about money is read from the ledger (`store.predictions`) and from the fake's own records.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from uuid import uuid4

import httpx
import pytest
from PIL import Image
from replicate.client import Client

from clipgen.catalog import MODELS
from clipgen.errors import (
    BudgetExceeded,
    ContentRejected,
    LostCreateUnresolved,
    PermanentError,
    TransientError,
    ValidationError,
)
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.media import matches_aspect, probe
from clipgen.model_inputs import ModelRequest, build_request
from clipgen.paid_work import LEDGER_WRITE_ATTEMPTS, ClipWork, JobWork
from clipgen.planning import ClipPlan, plan_job
from clipgen.prediction_states import billed
from clipgen.providers.base import Generation
from clipgen.providers.replicate import CLOCK_SKEW, CREATE_WINDOW, ReplicateProvider
from clipgen.stores.base import PredictionRecord
from clipgen.stores.local import LocalStore
from commands.cli import main
from staging.fake_replicate.server import FakeReplicateServer, Fault
from tests.conftest import EXAMPLE_JOB

IMAGES = EXAMPLE_JOB.parent / "images"
TARGETS = (1.0, 4.5, 5.0, 5.5, 7.0, 10.0, 12.0)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token="test-token", latency_s=0.05) as server:
        yield server


@contextmanager
def another_process(fake: FakeReplicateServer, token: str = "test-token") -> Iterator[ReplicateProvider]:
    """A provider as another worker has it: its own client, uploads and memory of predictions."""
    transport = httpx.HTTPTransport()
    client = Client(api_token=token, base_url=fake.base_url, transport=transport)
    provider = ReplicateProvider(client, poll_interval_s=0.02, api_transport=transport)
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture
def provider(fake: FakeReplicateServer) -> Iterator[ReplicateProvider]:
    with another_process(fake) as provider:
        yield provider


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "data")


def make_plans(
    model: str,
    ratio: str,
    target: float,
    *,
    image: bool = False,
    timeout_s: float | None = None,
    prompts: list[str] | None = None,
) -> list[ClipPlan]:
    """The clips of one new job; by default one clip with a prompt no other test uses."""
    clips: list[dict[str, Any]] = []
    for index, text in enumerate(prompts or [f"test {uuid4()}"]):
        prompt: dict[str, Any] = {"clip_index": index, "prompt": text, "duration": target}
        if image:
            prompt |= {"scene_reference_url": "meadow.jpg", "character_reference_urls": ["ada.png"]}
        clips.append(prompt)
    job = ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": clips})
    options = GenerationOptions(model=model, aspect_ratio=ratio, clip_timeout_s=timeout_s)
    return plan_job(job, options, lambda ref, field: IMAGES / ref).clips


def make_plan(
    model: str, ratio: str, target: float, *, image: bool = False, timeout_s: float | None = None
) -> ClipPlan:
    return make_plans(model, ratio, target, image=image, timeout_s=timeout_s)[0]


def generate(
    provider: ReplicateProvider,
    store: LocalStore,
    plan: ClipPlan,
    dest: Path,
    *,
    owner: str = "run-a",
    budget_usd: float | None = None,
) -> Generation:
    """One attempt at the clip, as the pipeline makes it: under the clip's lease, with the job's paid work."""
    work = JobWork(store, provider, owner=owner, budget_usd=budget_usd).clip(plan)
    with work.hold():
        return provider.generate(plan, dest, work)


def rows(store: LocalStore, plan: ClipPlan) -> list[PredictionRecord]:
    """The clip's ledger rows, oldest first."""
    return [p for p in store.predictions(plan.job_id) if p.clip_index == plan.clip_index]


def ledger(store: LocalStore, plan: ClipPlan) -> list[tuple[str, str]]:
    """(prediction id, status) of each of the clip's ledger rows; an intent's id is `intent:<uuid>`."""
    return [(p.prediction_id, p.status) for p in rows(store, plan)]


def made_for(fake: FakeReplicateServer, plan: ClipPlan) -> list[dict[str, Any]]:
    """The predictions the fake made with the clip's prompt, oldest first."""
    return [p for p in fake.predictions if p["input"].get("prompt") == plan.prompt]


def wait_for_status(fake: FakeReplicateServer, prediction_id: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while fake.prediction(prediction_id)["status"] != status:
        assert time.monotonic() < deadline, fake.prediction(prediction_id)
        time.sleep(0.02)


def combos() -> Iterator[tuple[str, str, float]]:
    for spec in MODELS.values():
        for ratio in spec.aspect_ratios:
            for target in TARGETS:
                yield spec.key, ratio, target


@pytest.mark.parametrize(("model", "ratio", "target"), list(combos()))
def test_every_model_ratio_and_target(
    model: str,
    ratio: str,
    target: float,
    fake: FakeReplicateServer,
    provider: ReplicateProvider,
    store: LocalStore,
    tmp_path: Path,
) -> None:
    spec = MODELS[model]
    image = spec.requires_image or ratio not in spec.text_aspect_ratios
    creates = fake.creates
    try:
        plan = make_plan(model, ratio, target, image=image)
    except ValidationError as refused:
        # Refused before any request, with the reason.
        assert "cannot be met" in str(refused)
        assert fake.creates == creates
        return
    dest = tmp_path / "clip.mp4"
    generation = generate(provider, store, plan, dest)

    info = probe(dest)
    assert info.duration >= plan.target_duration - 2.0, (info.duration, plan.requested_duration)
    assert matches_aspect(info.width, info.height, ratio), (info.width, info.height)
    assert fake.creates == creates + 1
    assert generation.prediction_id
    # On the ledger the moment it existed, at its price, and succeeded (the pipeline delivers it).
    assert ledger(store, plan) == [(generation.prediction_id, "succeeded")]
    assert billed(store.predictions(plan.job_id)) == pytest.approx(spec.cost(plan.requested_duration))


def test_a_hung_prediction_is_canceled_at_the_deadline(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, timeout_s=0.5)
    fake.add_fault(Fault(kind="hang", match=plan.prompt))
    started = time.monotonic()
    with pytest.raises(TransientError, match="canceled it"):
        generate(provider, store, plan, tmp_path / "clip.mp4")
    assert 0.5 <= time.monotonic() - started < 5
    [(hung, status)] = ledger(store, plan)
    assert status == "canceled" and fake.prediction(hung)["status"] == "canceled"
    # The next attempt does not re-attach to the canceled prediction: it pays for a new one, which
    # finishes (given time to render: the short deadline was only for the hung one).
    patient = plan.model_copy(update={"timeout_s": 60.0})
    generation = generate(provider, store, patient, tmp_path / "clip.mp4")
    assert generation.prediction_id != hung
    assert ledger(store, plan) == [(hung, "canceled"), (generation.prediction_id, "succeeded")]
    assert [p["status"] for p in made_for(fake, plan)] == ["canceled", "succeeded"]


def test_a_rate_limited_create_waits_for_the_hint(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="rate_limit", match=plan.prompt, seconds=1))
    creates = fake.creates
    started = time.monotonic()
    generation = generate(provider, store, plan, tmp_path / "clip.mp4")
    assert time.monotonic() - started >= 1.0
    assert fake.creates == creates + 1
    # The refused create's intent is void (it made nothing); the retry's prediction is the one paid for.
    [(_, refused), (paid, status)] = ledger(store, plan)
    assert refused == "void" and (paid, status) == (generation.prediction_id, "succeeded")
    assert billed(store.predictions(plan.job_id)) == pytest.approx(plan.estimated_cost)


def test_content_rejection_is_permanent(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(
        Fault(kind="fail", match=plan.prompt, error="The input or output was flagged as sensitive (E005)")
    )
    with pytest.raises(ContentRejected, match="E005"):
        generate(provider, store, plan, tmp_path / "clip.mp4")
    [made] = made_for(fake, plan)
    assert ledger(store, plan) == [(made["id"], "failed")]  # it ran: it is on the bill
    assert "E005" in (rows(store, plan)[0].error or "")


def test_a_failed_download_is_retried_against_the_same_prediction(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="download_error", match=plan.prompt))
    creates = fake.creates
    generation = generate(provider, store, plan, tmp_path / "clip.mp4")
    assert fake.creates == creates + 1
    assert fake.prediction(generation.prediction_id or "")["downloads"] == 2
    assert ledger(store, plan) == [(generation.prediction_id, "succeeded")]
    probe(tmp_path / "clip.mp4")


def test_a_later_attempt_re_attaches_instead_of_paying_again(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="download_error", match=plan.prompt, times=3))  # more than one attempt retries
    with pytest.raises(TransientError, match="failed 3 times"):
        generate(provider, store, plan, tmp_path / "clip.mp4")
    [(paid, status)] = ledger(store, plan)
    assert status == "succeeded"  # adoptable: only a download away
    creates = fake.creates
    # Another run, on another worker, takes the clip over: it downloads the same prediction again.
    with another_process(fake) as other:
        generation = generate(other, store, plan, tmp_path / "clip.mp4", owner="run-b")
    assert generation.prediction_id == paid
    assert fake.creates == creates
    assert ledger(store, plan) == [(paid, "succeeded")]
    assert billed(store.predictions(plan.job_id)) == pytest.approx(plan.estimated_cost)


def test_a_gone_output_is_abandoned_and_the_next_attempt_pays_for_a_new_one(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="expired", match=plan.prompt))
    with pytest.raises(TransientError, match="is gone"):
        generate(provider, store, plan, tmp_path / "clip.mp4")
    [(gone, status)] = ledger(store, plan)
    assert status == "abandoned"  # paid for, but never adopted again
    generation = generate(provider, store, plan, tmp_path / "clip.mp4")
    assert generation.prediction_id != gone
    assert ledger(store, plan) == [(gone, "abandoned"), (generation.prediction_id, "succeeded")]


def test_the_cli_runs_the_example_job_on_replicate(
    fake: FakeReplicateServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prefect_server: None
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", "test-token")
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    output = tmp_path / "clips.json"
    creates = fake.creates
    assert main(["run", str(EXAMPLE_JOB), "--provider", "replicate", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["successful_clips"] == 6
    assert fake.creates == creates + 6
    assert result["total_cost"] == pytest.approx(0.07 * (5 + 5 + 10 + 5 + 5 + 10))
    assert {clip["metadata"]["provider"] for clip in result["clips"]} == {"replicate"}


@pytest.fixture
def replicate_env(fake: FakeReplicateServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", "test-token")
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")


def flow_job(*prompts: str) -> ClipPrompts:
    clips = [{"clip_index": i, "prompt": p, "duration": 4.0} for i, p in enumerate(prompts)]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": clips})


@pytest.mark.usefixtures("prefect_server", "replicate_env")
def test_flow_cancels_a_hung_prediction_and_the_retry_succeeds(fake: FakeReplicateServer) -> None:
    from flows.video_generator import generate_video_clips

    tag = str(uuid4())
    job = flow_job(f"{tag} hangs once", f"{tag} fine", f"{tag} also fine")
    fake.add_fault(Fault(kind="hang", match=f"{tag} hangs"))
    options = GenerationOptions(model="veo-3.1", clip_timeout_s=5.0)  # room to render under load
    state: Any = generate_video_clips(job, options, provider="replicate", return_state=True)

    result = state.result()
    assert result.successful_clips == 3
    assert result.clips[0].retry_count == 1
    hung = [p for p in fake.predictions if f"{tag} hangs" in p["input"].get("prompt", "")]
    assert [p["status"] for p in hung] == ["canceled", "succeeded"]
    assert all(
        p["status"] == "succeeded"
        for p in fake.predictions
        if tag in p["input"].get("prompt", "") and p not in hung
    )


@pytest.mark.usefixtures("prefect_server", "replicate_env")
def test_flow_does_not_retry_a_permanent_failure(fake: FakeReplicateServer) -> None:
    from flows.video_generator import generate_video_clips

    tag = str(uuid4())
    job = flow_job(f"{tag} rejected", f"{tag} a", f"{tag} b", f"{tag} c")
    fake.add_fault(Fault(kind="fail", match=f"{tag} rejected", times=-1, error="flagged as sensitive (E005)"))
    state: Any = generate_video_clips(
        job, GenerationOptions(model="veo-3.1"), provider="replicate", return_state=True
    )

    result = state.result()
    assert state.is_completed() and result.successful_clips == 3
    assert result.clips[0].status == "failed" and "E005" in (result.clips[0].error or "")
    assert sum(f"{tag} rejected" in p["input"].get("prompt", "") for p in fake.predictions) == 1


@pytest.mark.parametrize(
    ("fault", "message"), [("server_error", "503"), ("connection_reset", "answer to a create was lost")]
)
def test_a_failed_create_is_transient_and_created_nothing(
    fault: str,
    message: str,
    fake: FakeReplicateServer,
    provider: ReplicateProvider,
    store: LocalStore,
    tmp_path: Path,
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind=fault, match=plan.prompt))
    creates = fake.creates
    with pytest.raises(TransientError, match=message):
        generate(provider, store, plan, tmp_path / "clip.mp4")
    assert fake.creates == creates
    # Looked for at once, and not found: the intent is void, off the bill and the budget.
    [(_, status)] = ledger(store, plan)
    assert status == "void" and billed(store.predictions(plan.job_id)) == 0


def test_a_wrong_token_is_permanent(fake: FakeReplicateServer, store: LocalStore, tmp_path: Path) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    with another_process(fake, token="wrong") as wrong, pytest.raises(PermanentError, match="401"):
        generate(wrong, store, plan, tmp_path / "clip.mp4")
    assert [status for _, status in ledger(store, plan)] == ["void"]


def test_a_large_image_goes_through_the_files_api(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = large_image_plan(tmp_path)
    uploads = fake.uploads
    generation = generate(provider, store, plan, tmp_path / "clip.mp4")
    assert fake.uploads == uploads + 1
    image = fake.prediction(generation.prediction_id or "")["input"]["image"]
    assert image.startswith(fake.base_url + "/v1/files/")
    assert ledger(store, plan) == [(generation.prediction_id, "succeeded")]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_unsupported_ratios_are_refused_before_any_request(model: str, fake: FakeReplicateServer) -> None:
    creates = fake.creates
    for ratio in ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2"):
        if ratio in MODELS[model].aspect_ratios:
            continue
        with pytest.raises(
            ValidationError, match=rf"options.aspect_ratio: {ratio} is not supported by {model}; .*\("
        ):
            make_plan(model, ratio, 4.0, image=True)
    assert fake.creates == creates


def test_a_create_whose_answer_was_lost_is_adopted_not_paid_again(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="reset_after_create", match=plan.prompt))
    resets = fake.connection_resets

    generation = generate(provider, store, plan, tmp_path / "clip.mp4")

    [made] = made_for(fake, plan)
    assert made["status"] == "succeeded" and generation.prediction_id == made["id"]
    # The intent became the prediction it made: on the ledger and the bill once.
    assert ledger(store, plan) == [(made["id"], "succeeded")]
    assert billed(store.predictions(plan.job_id)) == pytest.approx(plan.estimated_cost)
    assert fake.connection_resets == resets + 1


# --- a create whose answer never reached the ledger (the process died in between) ---------------------


def send_create(client: Client, request: ModelRequest) -> str:
    """The create itself, straight through the replicate client, as a process sends it before it dies."""
    if request.version:
        return client.predictions.create(version=request.version, input=request.input).id
    return client.models.predictions.create(model=request.model, input=request.input).id


@contextmanager
def dying_process(
    fake: FakeReplicateServer, store: LocalStore, plan: ClipPlan
) -> Iterator[tuple[ClipWork, Callable[[], str]]]:
    """Another worker's run on the same ledger, holding the clip: its ClipWork, and a `create()` that sends
    the clip's create through that worker's own client (and uploads) and returns the prediction's id."""
    with another_process(fake) as dying:
        work = JobWork(store, dying, owner=f"run-dead-{uuid4().hex[:8]}").clip(plan)
        with work.hold():
            yield work, lambda: send_create(dying._client, build_request(plan, dying._images.uri))


def died_in_create(fake: FakeReplicateServer, store: LocalStore, plan: ClipPlan) -> str:
    """A run puts the create's intent on the ledger, sends it, and dies before the answer is recorded
    (kill -9 in between): the id of the prediction it made, which no ledger row names."""
    with dying_process(fake, store, plan) as (work, create):
        work.intend()
        return create()


def large_image_plan(tmp_path: Path) -> ClipPlan:
    noise = Image.effect_noise((1920, 1080), 120).convert("RGB")  # over 256 KB as JPEG: the Files API
    noise.save(tmp_path / "noise.png")
    prompt = {
        "clip_index": 0,
        "prompt": f"noise {uuid4()}",
        "duration": 5.0,
        "scene_reference_url": "noise.png",
    }
    job = ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": [prompt]})
    return plan_job(job, GenerationOptions(model="wan-2.5-i2v"), lambda ref, field: tmp_path / ref).clips[0]


def test_a_gone_output_is_replaced_by_a_new_prediction_on_re_attach(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="expired", match=plan.prompt))
    # A run recorded its prediction and died; the prediction succeeded, and its output went since.
    with dying_process(fake, store, plan) as (work, create):
        intent = work.intend()
        first = create()
        work.created(intent.id, first)
    wait_for_status(fake, first, "succeeded")
    creates = fake.creates

    generation = generate(provider, store, plan, tmp_path / "clip.mp4")

    assert generation.prediction_id != first and fake.creates == creates + 1
    assert ledger(store, plan) == [(first, "abandoned"), (generation.prediction_id, "succeeded")]
    probe(tmp_path / "clip.mp4")


@pytest.mark.parametrize("image", ["text only", "Files API image"])
def test_a_create_that_died_unrecorded_is_adopted_by_the_next_attempt(
    image: str, fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0) if image == "text only" else large_image_plan(tmp_path)
    orphan = died_in_create(fake, store, plan)
    assert [status for _, status in ledger(store, plan)] == ["intended"]
    creates, uploads = fake.creates, fake.uploads

    # The next attempt is another run on another worker, reading the same ledger (a new store object).
    generation = generate(provider, LocalStore(tmp_path / "data"), plan, tmp_path / "clip.mp4", owner="run-b")

    assert generation.prediction_id == orphan and fake.creates == creates
    # The intent's row became the prediction: on the ledger and the bill (it was paid for), once.
    assert ledger(store, plan) == [(orphan, "succeeded")]
    # On the bill of the run that sent the create, not of the one that found it.
    assert (rows(store, plan)[0].run_id or "").startswith("run-dead-")
    assert billed(store.predictions(plan.job_id)) == pytest.approx(plan.estimated_cost)
    # Another process uploads the image anew (another file id); the input still counts as the same.
    assert fake.uploads == uploads + (image != "text only")
    probe(tmp_path / "clip.mp4")


def test_a_lost_create_is_not_guessed_among_look_alikes(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    prompt = f"look-alike {uuid4()}"
    ours = make_plans("veo-3.1", "16:9", 4.0, prompts=[prompt])[0]
    theirs = make_plans("veo-3.1", "16:9", 4.0, prompts=[prompt])[0]  # another job, the same input
    first = died_in_create(fake, store, ours)
    second = died_in_create(fake, store, theirs)  # which one did our create make?

    generation = generate(provider, store, ours, tmp_path / "a.mp4")

    # Paid again rather than take another job's: the lost create is settled as having made nothing ours.
    assert generation.prediction_id not in (first, second)
    [(_, lost), (paid, status)] = ledger(store, ours)
    assert lost == "void" and (paid, status) == (generation.prediction_id, "succeeded")


def test_a_lost_create_is_not_taken_from_the_ledger(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    prompt = f"twins {uuid4()}"
    lost, twin = make_plans("veo-3.1", "16:9", 4.0, prompts=[prompt, prompt])  # two clips, one input
    orphan = died_in_create(fake, store, lost)
    # The twin clip is made after it, with the same input, and is on the job's ledger.
    recorded = generate(provider, store, twin, tmp_path / "twin.mp4")
    creates = fake.creates

    generation = generate(provider, store, lost, tmp_path / "clip.mp4")

    assert generation.prediction_id == orphan != recorded.prediction_id
    assert fake.creates == creates
    assert ledger(store, lost) == [(orphan, "succeeded")]
    assert ledger(store, twin) == [(recorded.prediction_id, "succeeded")]


def test_a_lost_create_whose_prediction_failed_is_recorded_and_replaced(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="fail", match=plan.prompt, error="GPU worker lost"))
    orphan = died_in_create(fake, store, plan)
    wait_for_status(fake, orphan, "failed")

    generation = generate(provider, store, plan, tmp_path / "clip.mp4")

    assert generation.prediction_id != orphan
    assert ledger(store, plan) == [(orphan, "failed"), (generation.prediction_id, "succeeded")]
    # A failed prediction ran: both are on the bill.
    assert billed(store.predictions(plan.job_id)) == pytest.approx(2 * plan.estimated_cost)
    assert len(made_for(fake, plan)) == 2


def test_a_lost_create_is_found_pages_back(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    fake.reset()  # only this test's predictions in the list: the pages are exactly the ones counted here
    plan = make_plan("veo-3.1", "16:9", 4.0)
    orphan = died_in_create(fake, store, plan)
    for _ in range(5):  # newer predictions of other jobs push it to the third page
        died_in_create(fake, store, make_plan("veo-3.1", "16:9", 4.0))
    fake.state.page_size = 2
    try:
        generation = generate(provider, store, plan, tmp_path / "clip.mp4")
    finally:
        fake.state.page_size = 100
    assert generation.prediction_id == orphan
    assert ledger(store, plan) == [(orphan, "succeeded")]


# --- issue 13: paid work has one owner ---------------------------------------------------------------


@pytest.mark.parametrize(("fault", "made"), [("server_error", 0), ("reset_after_create", 1)])
def test_a_lost_answer_while_the_list_is_down_creates_nothing_until_it_can_tell(
    fault: str,
    made: int,
    fake: FakeReplicateServer,
    provider: ReplicateProvider,
    store: LocalStore,
    tmp_path: Path,
) -> None:
    """A create answered 5xx (made nothing) or reset after it made the prediction, while the list is down.

    Fails on the old code: its lookup took an unreadable list for "made nothing" and raised a plain
    TransientError, so the retry paid for a second prediction beside the one the lost create made; and no
    intent of the create was on any ledger for another worker to resolve.
    """
    plan = make_plan("veo-3.1", "16:9", 4.0)
    creates = fake.creates
    fake.add_fault(Fault(kind=fault, match=plan.prompt), Fault(kind="list_error", status=500, times=-1))
    try:
        with pytest.raises(LostCreateUnresolved):
            generate(provider, store, plan, tmp_path / "clip.mp4")
        # Another attempt (another run) while the list is still down creates nothing either.
        with another_process(fake) as other, pytest.raises(LostCreateUnresolved):
            generate(other, store, plan, tmp_path / "clip.mp4", owner="run-b")
        assert fake.creates == creates + made and len(made_for(fake, plan)) == made
        [(intent, status)] = ledger(store, plan)
        assert status == "intended"  # kept for the attempt that can tell what it made
    finally:
        fake.clear_faults()

    generation = generate(provider, store, plan, tmp_path / "clip.mp4")

    [paid] = made_for(fake, plan)
    assert fake.creates == creates + 1 and generation.prediction_id == paid["id"]
    if made:  # adopted: the intent's row became the prediction
        assert ledger(store, plan) == [(paid["id"], "succeeded")]
    else:  # looked for, not found: void, and a new create
        assert ledger(store, plan) == [(intent, "void"), (paid["id"], "succeeded")]
    assert billed(store.predictions(plan.job_id)) == pytest.approx(plan.estimated_cost)


def test_an_aborted_prediction_in_the_list_does_not_hide_a_lost_create(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    """One `aborted` prediction (of another job) in the listed page, then a create whose answer is lost.

    Fails on the old code: replicate 1.0.7 cannot parse a page holding an `aborted` prediction, the old
    lookup took that for "made nothing" and raised, and the next attempt paid for a second prediction.
    """
    other = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="abort", match=other.prompt, seconds=0))
    with dying_process(fake, store, other) as (_, create):
        aborted = create()
    wait_for_status(fake, aborted, "aborted")
    with another_process(fake) as reader, pytest.raises(ValueError):  # the premise: the client's list fails
        reader._client.predictions.list()

    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="reset_after_create", match=plan.prompt))
    generation = generate(provider, store, plan, tmp_path / "clip.mp4")

    [made] = made_for(fake, plan)
    assert generation.prediction_id == made["id"]
    assert ledger(store, plan) == [(made["id"], "succeeded")]


@pytest.mark.parametrize("refusal", ["401", "429"])
def test_a_refused_create_is_void_and_off_the_budget(
    refusal: str, fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    """A create the API refuses (4xx) made nothing: its intent is void, and the budget counts it no more.

    Fails on the old code: nothing was put on the ledger before a create, so no row says what a refused
    create did (no `void` row), and its budget reservation lived in one run's memory, not the ledger.
    """
    plan = make_plan("veo-3.1", "16:9", 4.0)
    budget = plan.estimated_cost  # room for exactly one prediction
    if refusal == "401":
        with another_process(fake, token="wrong") as wrong, pytest.raises(PermanentError, match="401"):
            generate(wrong, store, plan, tmp_path / "clip.mp4", budget_usd=budget)
        assert [status for _, status in ledger(store, plan)] == ["void"]
    else:
        fake.add_fault(Fault(kind="rate_limit", match=plan.prompt, seconds=0.2, times=2))

    # Were a void intent counted, this create would not fit the budget.
    generation = generate(provider, store, plan, tmp_path / "clip.mp4", budget_usd=budget)

    voids = 1 if refusal == "401" else 2
    assert [s for _, s in ledger(store, plan)] == ["void"] * voids + ["succeeded"]
    assert ledger(store, plan)[-1][0] == generation.prediction_id
    assert billed(store.predictions(plan.job_id)) == pytest.approx(plan.estimated_cost)
    # The budget binds: what is spent leaves no room for even a cent more.
    extra = rows(store, plan)[-1].model_copy(update={"prediction_id": f"intent:{uuid4()}", "cost": 0.01})
    assert not store.reserve_prediction(extra.model_copy(update={"status": "intended"}), budget)


class LedgerLockedStore(LocalStore):
    """The real local store, but the ledger write that records a create's answer always fails, as when
    another writer holds SQLite's lock past the busy timeout."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.resolve_attempts = 0

    def resolve_intent(self, intent_id: str, record: PredictionRecord) -> None:
        self.resolve_attempts += 1
        raise sqlite3.OperationalError("database is locked")


def test_a_prediction_the_ledger_cannot_record_is_canceled_at_once(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    """The create is answered but its prediction cannot go on the ledger: it is canceled, not left running.

    Fails on the old code: it handed the new id to `on_created`, and when recording it raised, the
    prediction went on running (and billing) with nothing on record owning it.
    """
    store = LedgerLockedStore(tmp_path / "data")
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="hang", match=plan.prompt))  # it would run until stopped

    with pytest.raises((sqlite3.OperationalError, TransientError), match="database is locked"):
        generate(provider, store, plan, tmp_path / "clip.mp4")

    [made] = made_for(fake, plan)
    assert made["status"] == "canceled" and made["canceled"]
    assert fake.prediction(made["id"])["status"] == "canceled"
    assert store.resolve_attempts == LEDGER_WRITE_ATTEMPTS
    # The intent stays: the next attempt finds the (canceled) prediction in the list and records it.
    assert [status for _, status in ledger(store, plan)] == ["intended"]


@pytest.mark.parametrize("second_run", [False, True])
def test_the_budget_refuses_a_create_before_it_reaches_the_api(
    second_run: bool,
    fake: FakeReplicateServer,
    provider: ReplicateProvider,
    store: LocalStore,
    tmp_path: Path,
) -> None:
    """Room for 1.5 clips: the first clip is made, the second is refused before any create is sent, by the
    same run or by another run that started before the first paid.

    Fails on the old code: each run counted the budget in its own memory, seeded from the ledger when it
    started; a run started before another's create went out did not see it, and paid past the budget.
    """
    first, second = make_plans("veo-3.1", "16:9", 4.0, prompts=[f"a {uuid4()}", f"b {uuid4()}"])
    budget = 1.5 * first.estimated_cost
    run_a = JobWork(store, provider, owner="run-a", budget_usd=budget)
    with another_process(fake) as other:
        run_b = (
            JobWork(LocalStore(tmp_path / "data"), other, owner="run-b", budget_usd=budget)
            if second_run
            else run_a
        )
        work = run_a.clip(first)
        with work.hold():
            provider.generate(first, tmp_path / "first.mp4", work)
        creates, requests = fake.creates, len(fake.create_requests)

        refused = run_b.clip(second)
        with refused.hold(), pytest.raises(BudgetExceeded, match="budget"):
            run_b.provider.generate(second, tmp_path / "second.mp4", refused)

    assert fake.creates == creates and len(fake.create_requests) == requests
    assert made_for(fake, second) == []
    assert ledger(store, second) == []
    assert billed(store.predictions(first.job_id)) == pytest.approx(first.estimated_cost)


# --- found while porting (each fails on the provider as it was before the fix) -----------------------


def test_a_refused_read_does_not_give_up_a_paid_prediction(
    fake: FakeReplicateServer, provider: ReplicateProvider, store: LocalStore, tmp_path: Path
) -> None:
    """Only a 404 means the API does not know a prediction: a 401 (a wrong or revoked token) fails the
    attempt and leaves the prediction adoptable, for the run with the right token to download.

    Failed before the fix: any PermanentError on re-attach marked the prediction `abandoned` (as if gone),
    so the next run with a good token paid for another.
    """
    plan = make_plan("veo-3.1", "16:9", 4.0)
    fake.add_fault(Fault(kind="download_error", match=plan.prompt, times=3))
    with pytest.raises(TransientError, match="failed 3 times"):
        generate(provider, store, plan, tmp_path / "clip.mp4")
    [(paid, _)] = ledger(store, plan)

    with another_process(fake, token="wrong") as wrong, pytest.raises(PermanentError, match="401"):
        generate(wrong, store, plan, tmp_path / "clip.mp4", owner="run-b")
    assert ledger(store, plan) == [(paid, "succeeded")]

    creates = fake.creates
    generation = generate(provider, store, plan, tmp_path / "clip.mp4", owner="run-c")
    assert generation.prediction_id == paid and fake.creates == creates


class EdgeTransport(httpx.HTTPTransport):
    """The real transport, keeping every request's URL; the first `garbled` creates are answered, after the
    API made the prediction, with a proxy's page instead of it (a 201 that is not JSON)."""

    def __init__(self, garbled: int = 0) -> None:
        super().__init__()
        self.urls: list[httpx.URL] = []
        self.garbled = garbled

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path.endswith("/predictions") and self.garbled > 0:
            self.garbled -= 1
            response.read()
            response.close()
            return httpx.Response(201, text="<html>upstream hiccup</html>", request=request)
        return response


@contextmanager
def provider_on(fake: FakeReplicateServer, transport: EdgeTransport) -> Iterator[ReplicateProvider]:
    client = Client(api_token="test-token", base_url=fake.base_url, transport=transport)
    provider = ReplicateProvider(client, poll_interval_s=0.02, api_transport=transport)
    try:
        yield provider
    finally:
        provider.close()


def test_a_create_answered_with_an_unreadable_page_is_looked_up_at_once(
    fake: FakeReplicateServer, store: LocalStore, tmp_path: Path
) -> None:
    """A 2xx answer to a create that is not a prediction: it may have made one, so it is a lost answer.

    Failed before the fix: the JSON error escaped `generate` as a bare ValueError (not a TransientError, so
    the pipeline would not try again in this run), with the prediction it made running unrecorded.
    """
    plan = make_plan("veo-3.1", "16:9", 4.0)
    with provider_on(fake, EdgeTransport(garbled=1)) as garbling:
        generation = generate(garbling, store, plan, tmp_path / "clip.mp4")
    [made] = made_for(fake, plan)
    assert generation.prediction_id == made["id"]
    assert ledger(store, plan) == [(made["id"], "succeeded")]


def test_a_lost_create_is_looked_for_in_its_own_window(
    fake: FakeReplicateServer, store: LocalStore, tmp_path: Path
) -> None:
    """The list is asked only for the predictions made while the lost create can have reached the API.

    Failed before the fix: the list was read from the newest prediction back; a lookup long after the
    create (a rerun the next day, more than LOST_CREATE_PAGES pages of predictions later) could never reach
    it, and the clip was blocked for good with LostCreateUnresolved.
    """
    plan = make_plan("veo-3.1", "16:9", 4.0)
    orphan = died_in_create(fake, store, plan)
    transport = EdgeTransport()
    with provider_on(fake, transport) as looking:
        generation = generate(looking, store, plan, tmp_path / "clip.mp4")
    assert generation.prediction_id == orphan

    [sent_at] = [p.created_at for p in rows(store, plan)]  # the intent's time, kept by its row
    assert sent_at is not None
    # The lookup's reads of the list; the provider's other one, of recent latencies, has no window.
    lookups = [url for url in transport.urls if url.path == "/v1/predictions" and url.query]
    [query] = [parse_qs(url.query.decode()) for url in lookups]
    after = datetime.fromisoformat(query["created_after"][0].replace("Z", "+00:00"))
    before = datetime.fromisoformat(query["created_before"][0].replace("Z", "+00:00"))
    assert abs((after - (sent_at - CLOCK_SKEW)).total_seconds()) < 0.01
    assert abs((before - (sent_at + CREATE_WINDOW + CLOCK_SKEW)).total_seconds()) < 0.01
