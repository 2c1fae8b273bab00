"""The Replicate provider, driven through the real `replicate` client against the fake API over HTTP.

The fake validates every input against the model's published schema (strict: unknown fields are refused)
and renders outputs with the duration and shape the real model would produce.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from PIL import Image
from replicate.client import Client

from clipgen.catalog import MODELS
from clipgen.cli import main
from clipgen.errors import ContentRejected, PermanentError, TransientError, ValidationError
from clipgen.fake_replicate.server import FakeReplicateServer, Fault
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.media import matches_aspect, probe
from clipgen.planning import ClipPlan, plan_job
from clipgen.providers.base import LostCreate
from clipgen.providers.replicate import ReplicateProvider
from tests.conftest import EXAMPLE_JOB

IMAGES = EXAMPLE_JOB.parent / "images"
TARGETS = (1.0, 4.5, 5.0, 5.5, 7.0, 10.0, 12.0)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token="test-token", latency_s=0.05) as server:
        yield server


@pytest.fixture
def provider(fake: FakeReplicateServer) -> Iterator[ReplicateProvider]:
    transport = httpx.HTTPTransport()
    client = Client(api_token="test-token", base_url=fake.base_url, transport=transport)
    provider = ReplicateProvider(client, poll_interval_s=0.02, api_transport=transport)
    yield provider
    provider.close()


def make_plan(
    model: str, ratio: str, target: float, *, image: bool, timeout_s: float | None = None
) -> ClipPlan:
    prompt: dict[str, Any] = {"clip_index": 0, "prompt": f"test {uuid4()}", "duration": target}
    if image:
        prompt |= {"scene_reference_url": "meadow.jpg", "character_reference_urls": ["ada.png"]}
    job = ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": [prompt]})
    options = GenerationOptions(model=model, aspect_ratio=ratio, clip_timeout_s=timeout_s)
    return plan_job(job, options, lambda ref, field: IMAGES / ref).clips[0]


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
    generation = provider.generate(plan, dest)

    info = probe(dest)
    assert info.duration >= plan.target_duration - 2.0, (info.duration, plan.requested_duration)
    assert matches_aspect(info.width, info.height, ratio), (info.width, info.height)
    assert fake.creates == creates + 1
    assert generation.cost == pytest.approx(spec.cost(plan.requested_duration))
    assert generation.prediction_id


def test_a_hung_prediction_is_canceled_at_the_deadline(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False, timeout_s=0.5)
    fake.add_fault(Fault(kind="hang", match=plan.prompt))
    created: list[str] = []
    started = time.monotonic()
    with pytest.raises(Exception, match="canceled it") as caught:
        provider.generate(plan, tmp_path / "clip.mp4", on_created=created.append)
    assert type(caught.value).__name__ == "TransientError"
    assert 0.5 <= time.monotonic() - started < 5
    assert len(created) == 1
    assert fake.prediction(created[0])["status"] == "canceled"
    # The next attempt sees the canceled prediction and pays for a new one, which finishes (given time to
    # render: the short deadline was only for the hung one).
    patient = plan.model_copy(update={"timeout_s": 60.0})
    generation = provider.generate(patient, tmp_path / "clip.mp4", resume=created[0])
    assert generation.prediction_id != created[0]


def test_a_rate_limited_create_waits_for_the_hint(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    fake.add_fault(Fault(kind="rate_limit", match=plan.prompt, seconds=1))
    creates = fake.creates
    started = time.monotonic()
    provider.generate(plan, tmp_path / "clip.mp4")
    assert time.monotonic() - started >= 1.0
    assert fake.creates == creates + 1


def test_content_rejection_is_permanent(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    fake.add_fault(
        Fault(kind="fail", match=plan.prompt, error="The input or output was flagged as sensitive (E005)")
    )
    with pytest.raises(ContentRejected, match="E005"):
        provider.generate(plan, tmp_path / "clip.mp4")


def test_a_failed_download_is_retried_against_the_same_prediction(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    fake.add_fault(Fault(kind="download_error", match=plan.prompt))
    creates = fake.creates
    generation = provider.generate(plan, tmp_path / "clip.mp4")
    assert fake.creates == creates + 1
    assert fake.prediction(generation.prediction_id or "")["downloads"] == 2
    probe(tmp_path / "clip.mp4")


def test_a_later_attempt_re_attaches_instead_of_paying_again(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    fake.add_fault(Fault(kind="download_error", match=plan.prompt, times=3))  # more than one attempt retries
    created: list[str] = []
    with pytest.raises(Exception, match="failed 3 times"):
        provider.generate(plan, tmp_path / "clip.mp4", on_created=created.append)
    creates = fake.creates
    generation = provider.generate(plan, tmp_path / "clip.mp4", resume=created[0])
    assert generation.prediction_id == created[0]
    assert fake.creates == creates


def test_a_gone_output_is_replaced_by_a_new_prediction_on_re_attach(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    fake.add_fault(Fault(kind="expired", match=plan.prompt))
    created: list[str] = []
    with pytest.raises(Exception, match="is gone"):
        provider.generate(plan, tmp_path / "clip.mp4", on_created=created.append)
    generation = provider.generate(plan, tmp_path / "clip.mp4", resume=created[0])
    assert generation.prediction_id != created[0]


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
    state = generate_video_clips(job, options, provider="replicate", return_state=True)

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
    state = generate_video_clips(
        job, GenerationOptions(model="veo-3.1"), provider="replicate", return_state=True
    )

    result = state.result()
    assert state.is_completed() and result.successful_clips == 3
    assert result.clips[0].status == "failed" and "E005" in (result.clips[0].error or "")
    assert sum(f"{tag} rejected" in p["input"].get("prompt", "") for p in fake.predictions) == 1


@pytest.mark.parametrize(
    ("fault", "message"), [("server_error", "503"), ("connection_reset", "creating the prediction")]
)
def test_a_failed_create_is_transient_and_created_nothing(
    fault: str, message: str, fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    fake.add_fault(Fault(kind=fault, match=plan.prompt))
    creates = fake.creates
    with pytest.raises(TransientError, match=message):
        provider.generate(plan, tmp_path / "clip.mp4")
    assert fake.creates == creates


def test_a_wrong_token_is_permanent(fake: FakeReplicateServer, tmp_path: Path) -> None:
    transport = httpx.HTTPTransport()
    wrong = ReplicateProvider(
        Client(api_token="wrong", base_url=fake.base_url, transport=transport), api_transport=transport
    )
    try:
        with pytest.raises(PermanentError, match="401"):
            wrong.generate(make_plan("veo-3.1", "16:9", 4.0, image=False), tmp_path / "clip.mp4")
    finally:
        wrong.close()


def test_a_large_image_goes_through_the_files_api(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    noise = Image.effect_noise((1920, 1080), 120).convert("RGB")  # incompressible: well over 256 KB as JPEG
    noise.save(tmp_path / "noise.png")
    job = ClipPrompts.model_validate(
        {
            "job_id": str(uuid4()),
            "clip_prompts": [
                {"clip_index": 0, "prompt": "noise", "duration": 5.0, "scene_reference_url": "noise.png"}
            ],
        }
    )
    plan = plan_job(job, GenerationOptions(model="wan-2.5-i2v"), lambda ref, field: tmp_path / ref).clips[0]
    uploads = fake.uploads
    generation = provider.generate(plan, tmp_path / "clip.mp4")
    assert fake.uploads == uploads + 1
    image = fake.prediction(generation.prediction_id or "")["input"]["image"]
    assert image.startswith(fake.base_url + "/v1/files/")


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


@pytest.mark.parametrize("fault", ["reset_after_create"])
def test_a_create_whose_answer_was_lost_is_adopted_not_paid_again(
    fault: str, fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    fake.add_fault(Fault(kind=fault, match=plan.prompt))
    created: list[str] = []

    generation = provider.generate(plan, tmp_path / "clip.mp4", on_created=created.append)

    made = [p for p in fake.predictions if p["input"].get("prompt") == plan.prompt]
    assert len(made) == 1 and made[0]["status"] == "succeeded"
    assert generation.prediction_id == made[0]["id"] and created == [made[0]["id"]]
    assert fake.connection_resets >= 1


# --- a create whose answer never reached the ledger (the process died in between) ---------------------


class Died(BaseException):
    """kill -9 between Replicate's answer and the ledger write: nothing after it runs."""


def die(prediction_id: str) -> None:
    raise Died(prediction_id)


@contextmanager
def another_process(fake: FakeReplicateServer) -> Iterator[ReplicateProvider]:
    """A provider as another worker has it: its own client, uploads and memory of predictions."""
    transport = httpx.HTTPTransport()
    client = Client(api_token="test-token", base_url=fake.base_url, transport=transport)
    provider = ReplicateProvider(client, poll_interval_s=0.02, api_transport=transport)
    try:
        yield provider
    finally:
        provider.close()


def died_in_create(fake: FakeReplicateServer, plan: ClipPlan, tmp_path: Path) -> tuple[str, datetime]:
    """A process creates the clip's prediction and dies before recording it: its id, and when it was sent."""
    sent_at = datetime.now(UTC)
    with another_process(fake) as dying, pytest.raises(Died) as died:
        dying.generate(plan, tmp_path / "dead.mp4", on_created=die)
    return str(died.value), sent_at


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


@pytest.mark.parametrize("image", ["text only", "Files API image"])
def test_a_create_that_died_unrecorded_is_adopted_by_the_next_attempt(
    image: str, fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = (
        make_plan("veo-3.1", "16:9", 4.0, image=False) if image == "text only" else large_image_plan(tmp_path)
    )
    orphan, sent_at = died_in_create(fake, plan, tmp_path)
    creates, uploads = fake.creates, fake.uploads
    recorded: list[str] = []

    generation = provider.generate(
        plan, tmp_path / "clip.mp4", on_created=recorded.append, lost_create=LostCreate(sent_at, frozenset())
    )

    assert generation.prediction_id == orphan and recorded == [orphan]  # on the ledger now: it was paid for
    assert fake.creates == creates
    # Another process uploads the image anew (another file id); the input still counts as the same.
    assert fake.uploads == uploads + (image != "text only")
    probe(tmp_path / "clip.mp4")


def test_a_lost_create_is_not_guessed_among_look_alikes_or_taken_from_the_ledger(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    first, sent_at = died_in_create(fake, plan, tmp_path)
    second, _ = died_in_create(fake, plan, tmp_path)  # the same input twice: which one was ours?

    ambiguous = provider.generate(plan, tmp_path / "a.mp4", lost_create=LostCreate(sent_at, frozenset()))
    # One of them is another clip's, on the job's ledger: the other is ours.
    known = provider.generate(plan, tmp_path / "b.mp4", lost_create=LostCreate(sent_at, frozenset({first})))

    assert ambiguous.prediction_id not in (first, second)  # paid again rather than take another's
    assert known.prediction_id == second


def test_a_lost_create_whose_prediction_failed_is_recorded_and_replaced(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    fake.add_fault(Fault(kind="fail", match=plan.prompt, error="GPU worker lost"))
    orphan, sent_at = died_in_create(fake, plan, tmp_path)
    while fake.prediction(orphan)["status"] != "failed":
        time.sleep(0.02)
    recorded: list[str] = []

    generation = provider.generate(
        plan, tmp_path / "clip.mp4", on_created=recorded.append, lost_create=LostCreate(sent_at, frozenset())
    )

    assert recorded == [orphan, generation.prediction_id] and generation.prediction_id != orphan


def test_a_lost_create_is_found_pages_back(
    fake: FakeReplicateServer, provider: ReplicateProvider, tmp_path: Path
) -> None:
    plan = make_plan("veo-3.1", "16:9", 4.0, image=False)
    orphan, sent_at = died_in_create(fake, plan, tmp_path)
    for _ in range(5):  # newer predictions of other clips push it to the third page
        died_in_create(fake, make_plan("veo-3.1", "16:9", 4.0, image=False), tmp_path)
    fake.state.page_size = 2
    try:
        generation = provider.generate(
            plan, tmp_path / "clip.mp4", lost_create=LostCreate(sent_at, frozenset())
        )
    finally:
        fake.state.page_size = 100
    assert generation.prediction_id == orphan
