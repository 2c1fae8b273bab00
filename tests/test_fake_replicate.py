"""The fake Replicate API, driven by the real `replicate` client over real sockets (no mocks).

Checks that it answers like Replicate (routes, JSON, errors), validates inputs strictly against the models'
published schemas, delivers outputs of the shape and length the real model would, and injects and records
faults.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pydantic
import pytest
from jsonschema import Draft4Validator
from PIL import Image
from pydantic.v1 import ValidationError as V1ValidationError
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction

import clipgen
from clipgen.catalog import MODELS
from clipgen.errors import MediaError
from clipgen.media import VideoInfo, probe
from staging.fake_replicate import FakeReplicateServer, Fault
from staging.fake_replicate.outputs import OutputPlan, plan_output
from staging.fake_replicate.renders import RenderCache
from staging.fake_replicate.schemas import ModelSchema, all_schemas, by_model, fake_version

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def schema(model: str) -> ModelSchema:
    found = by_model(model)
    assert found is not None, model
    return found


SVD = schema("stability-ai/stable-video-diffusion")
TERMINAL = ("succeeded", "failed", "canceled")


# --- fixtures and helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token=TOKEN, latency_s=0.05) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_leftover_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").clear_faults()


def make_client(base_url: str, token: str = TOKEN) -> tuple[Client, httpx.HTTPTransport]:
    # The client never closes its connection pool; own the transport so the test can.
    transport = httpx.HTTPTransport()
    return Client(api_token=token, base_url=base_url, transport=transport), transport


@pytest.fixture
def client(fake: FakeReplicateServer) -> Iterator[Client]:
    replicate, transport = make_client(fake.base_url)
    yield replicate
    transport.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as session:
        yield session


def image_uri(width: int, height: int, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def wait(client: Client, prediction: Prediction, timeout_s: float = 30) -> Prediction:
    deadline = time.monotonic() + timeout_s
    while prediction.status not in TERMINAL:
        assert time.monotonic() < deadline, f"{prediction.id} still {prediction.status}"
        time.sleep(0.02)
        prediction = client.predictions.get(prediction.id)
    return prediction


def veo(client: Client, prompt: str, **extra: Any) -> Prediction:
    """A small, fast Veo prediction (4 s at 720p)."""
    values = {"prompt": prompt, "duration": 4, "resolution": "720p", "generate_audio": False} | extra
    return client.models.predictions.create(model="google/veo-3.1", input=values)


def output_url(prediction: Prediction) -> str:
    assert isinstance(prediction.output, str), prediction.output
    return prediction.output


def fetch(http: httpx.Client, prediction: Prediction, dest: Path) -> httpx.Response:
    response = http.get(output_url(prediction))
    if response.status_code == 200:
        dest.write_bytes(response.content)
    return response


def rejected(call: Any) -> ReplicateError:
    with pytest.raises(ReplicateError) as caught:
        call()
    return caught.value


# --- the happy path -------------------------------------------------------------------------------------


def test_an_official_model_runs_to_an_output_of_the_right_shape(
    fake: FakeReplicateServer, client: Client, http: httpx.Client, tmp_path: Path
) -> None:
    values = {"prompt": "a lighthouse", "aspect_ratio": "9:16", "duration": 6, "generate_audio": False}
    created = client.models.predictions.create(model="google/veo-3.1", input=values)
    assert created.status == "starting"
    assert created.model == "google/veo-3.1" and len(created.version) == 64
    assert created.input == values and created.output is None and created.error is None
    assert created.urls and created.urls["get"] == f"{fake.base_url}/v1/predictions/{created.id}"
    assert created.created_at and created.created_at.endswith("Z")

    done = wait(client, created)
    assert done.status == "succeeded", done.error
    assert done.started_at and done.completed_at and done.metrics and done.metrics["predict_time"] > 0
    assert done.output == f"{fake.base_url}/_fake/outputs/{done.id}.mp4"
    response = fetch(http, done, tmp_path / "out.mp4")
    assert response.headers["content-type"] == "video/mp4"
    info = probe(tmp_path / "out.mp4")
    assert (info.width, info.height, info.duration, info.fps) == (1080, 1920, 6.0, 24.0)
    assert done.id in [listed.id for listed in client.predictions.list()]
    record = fake.prediction(done.id)
    assert record["downloads"] == 1 and record["status"] == "succeeded" and not record["canceled"]


def test_the_prediction_list_is_paged_newest_first_and_pages_hold_still(
    fake: FakeReplicateServer, client: Client
) -> None:
    made = [veo(client, f"paging {i}").id for i in range(5)]
    fake.state.page_size = 2
    try:
        page = client.predictions.list()
        listed = [p.id for p in page]
        veo(client, "made while paging")  # newer: lands on the first page, does not shift the later ones
        while page.next:
            assert page.next.startswith(f"{fake.base_url}/v1/predictions?cursor=")
            page = client.predictions.list(cursor=page.next)
            assert len(page.results) <= 2
            listed += [p.id for p in page]
    finally:
        fake.state.page_size = 100
    assert listed[:5] == made[::-1] and len(listed) == len(set(listed))


def test_the_list_keeps_the_window_asked_for_across_pages(fake: FakeReplicateServer, client: Client) -> None:
    before = [veo(client, f"window before {i}").id for i in range(2)]
    time.sleep(0.05)
    start = datetime.now(UTC)
    inside = [veo(client, f"window inside {i}").id for i in range(3)]
    end = datetime.now(UTC)
    time.sleep(0.05)
    veo(client, "window after")
    window = urlencode({"created_after": start.isoformat(), "created_before": end.isoformat()})
    fake.state.page_size = 2
    try:
        page = client.predictions.list(cursor=f"{fake.base_url}/v1/predictions?{window}")
        listed = [p.id for p in page]
        while page.next:
            assert "created_after=" in page.next and "created_before=" in page.next
            page = client.predictions.list(cursor=page.next)
            listed += [p.id for p in page]
    finally:
        fake.state.page_size = 100
    assert listed == inside[::-1] and not set(before) & set(listed)
    bad = rejected(
        lambda: client.predictions.list(cursor=f"{fake.base_url}/v1/predictions?created_after=soon")
    )
    assert bad.status == 400


def probe_output(http: httpx.Client, prediction: Prediction, tmp_path: Path) -> VideoInfo:
    assert prediction.status == "succeeded", prediction.error
    assert fetch(http, prediction, tmp_path / f"{prediction.id}.mp4").status_code == 200
    return probe(tmp_path / f"{prediction.id}.mp4")


@pytest.mark.parametrize(
    ("image", "values", "expected"),
    [
        # 1280x720 fitted into 1024 wide: 1024x576; 25 frames written at frames_per_second + 1.
        ((1280, 720), {"video_length": "25_frames_with_svd_xt", "frames_per_second": 5}, (1024, 576, 25 / 6)),
        # cog-svd keeps a portrait image's ratio inside 576 high, floored to multiples of 64.
        ((720, 1280), {}, (320, 576, 14 / 7)),
        ((640, 480), {"sizing_strategy": "use_image_dimensions", "frames_per_second": 13}, (640, 448, 1.0)),
        ((500, 500), {"sizing_strategy": "crop_to_16_9"}, (1024, 576, 2.0)),
    ],
)
def test_a_community_model_runs_by_version(
    image: tuple[int, int],
    values: dict[str, Any],
    expected: tuple[int, int, float],
    client: Client,
    http: httpx.Client,
    tmp_path: Path,
) -> None:
    created = client.predictions.create(
        version=SVD.version, input={"input_image": image_uri(*image)} | values
    )
    assert created.model == "stability-ai/stable-video-diffusion" and created.version == SVD.version
    info = probe_output(http, wait(client, created), tmp_path)
    assert (info.width, info.height) == expected[:2]
    assert info.duration == pytest.approx(expected[2], abs=0.01)


@pytest.mark.parametrize(
    ("model", "values"),
    [
        ("cuuupid/cogvideox-5b", {"prompt": "waves", "steps": 20}),
        ("thudm/cogvideox-i2v", {"image": image_uri(64, 64)}),
    ],
)
def test_cogvideox_models_run_by_version(
    model: str, values: dict[str, Any], client: Client, http: httpx.Client, tmp_path: Path
) -> None:
    done = wait(client, client.predictions.create(version=schema(model).version, input=values))
    info = probe_output(http, done, tmp_path)
    assert (info.width, info.height, info.frames, info.fps) == (720, 480, 49, 8.0)


def test_hailuo_follows_its_first_frame(client: Client, http: httpx.Client, tmp_path: Path) -> None:
    values = {"prompt": "rain", "first_frame_image": image_uri(360, 640, "JPEG"), "prompt_optimizer": False}
    done = wait(client, client.models.predictions.create(model="minimax/hailuo-2.3", input=values))
    info = probe_output(http, done, tmp_path)
    assert (info.width, info.height, info.duration, info.fps) == (768, 1366, 6.0, 25.0)


def test_prefer_wait_holds_the_create_until_the_prediction_is_done(client: Client) -> None:
    created = client.models.predictions.create(
        model="google/veo-3.1", input={"prompt": "sync", "duration": 4, "resolution": "720p"}, wait=10
    )
    assert created.status == "succeeded" and created.output


def test_an_uploaded_file_is_an_image_input(
    fake: FakeReplicateServer, client: Client, http: httpx.Client, tmp_path: Path
) -> None:
    path = tmp_path / "start.png"
    Image.new("RGB", (640, 360), (200, 60, 60)).save(path)
    uploads = fake.uploads
    uploaded = client.files.create(path, metadata={"clip": 3})
    assert fake.uploads == uploads + 1
    assert uploaded.name == "start.png" and uploaded.content_type == "image/png"
    assert uploaded.size == path.stat().st_size and uploaded.metadata == {"clip": 3}
    assert len(uploaded.checksums["sha256"]) == 64 and uploaded.expires_at
    assert client.files.get(uploaded.id).id == uploaded.id
    assert uploaded.id in [listed.id for listed in client.files.list()]
    assert http.get(f"{fake.base_url}/v1/files/{uploaded.id}/download").content == path.read_bytes()

    values = {"prompt": "sunrise", "start_image": uploaded.urls["get"], "duration": 5}
    done = wait(client, client.models.predictions.create(model="kwaivgi/kling-v2.1", input=values))
    info = probe_output(http, done, tmp_path)
    assert (info.width, info.height, info.duration, info.fps) == (1280, 720, 5.0, 24.0)

    assert client.files.delete(uploaded.id)
    with pytest.raises(ReplicateError) as gone:
        client.files.get(uploaded.id)
    assert gone.value.status == 404
    again = wait(client, client.models.predictions.create(model="kwaivgi/kling-v2.1", input=values))
    assert again.status == "failed" and again.error and "Could not download input image" in again.error


def test_uploads_over_the_cap_are_refused(fake: FakeReplicateServer, client: Client) -> None:
    fake.state.files.max_bytes = 1000
    try:
        error = rejected(lambda: client.files.create(io.BytesIO(b"x" * 2000), filename="big.bin"))
    finally:
        fake.state.files.max_bytes = 100 * 1024 * 1024
    assert error.status == 413 and "less than 1000 bytes" in (error.detail or "")


# --- what the real service refuses ----------------------------------------------------------------------

KLING = {"prompt": "a fox", "start_image": "https://example.com/fox.png"}


@pytest.mark.parametrize(
    ("model", "values", "line"),
    [
        (
            "kwaivgi/kling-v2.1",
            KLING | {"duration": 7},
            "- input.duration: duration must be one of the following: 5, 10",
        ),
        ("kwaivgi/kling-v2.1", {"prompt": "a fox"}, "- input: start_image is required"),
        (
            "kwaivgi/kling-v2.1",
            KLING | {"aspect_ratio": "16:9"},
            "- input: Additional property aspect_ratio is not",
        ),
        (
            "kwaivgi/kling-v2.1",
            KLING | {"mode": "turbo"},
            'mode must be one of the following: "standard", "pro"',
        ),
        (
            "google/veo-3.1",
            {"prompt": "x", "duration": "8"},
            "input.duration: Invalid type. Expected: integer, given: string",
        ),
        (
            "google/veo-3.1",
            {"prompt": "x", "duration": 8.0},
            "input.duration: Invalid type. Expected: integer, given: number",
        ),
        (
            "google/veo-3.1",
            {"prompt": "x", "generate_audio": 0},
            "input.generate_audio: Invalid type. Expected: boolean",
        ),
        ("google/veo-3.1", {"prompt": None}, "input.prompt: Invalid type. Expected: string, given: null"),
        (
            "google/veo-3.1",
            {"prompt": "x", "image": "meadow.jpg"},
            "input.image: Does not match format 'uri'",
        ),
        (
            "google/veo-3.1",
            {"prompt": "x", "reference_images": ["ftp://a/b.png"]},
            "input.reference_images.0: Does not",
        ),
        (
            "minimax/hailuo-2.3",
            {"prompt": "x", "duration": 5},
            "input.duration: duration must be one of the following: 6, 10",
        ),
    ],
)
def test_invalid_input_is_refused_with_the_field_named(
    model: str, values: dict[str, Any], line: str, fake: FakeReplicateServer, client: Client
) -> None:
    creates, refused = fake.creates, fake.rejected_creates.get(422, 0)
    error = rejected(lambda: client.models.predictions.create(model=model, input=values))
    assert error.status == 422 and error.title == "Input validation failed"
    assert line in (error.detail or ""), error.detail
    assert fake.creates == creates and fake.rejected_creates[422] == refused + 1


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ({"input_image": image_uri(64, 64), "fps": 6}, "- input: Additional property fps is not allowed"),
        (
            {"input_image": image_uri(64, 64), "frames_per_second": 4},
            "- input.frames_per_second: Must be greater than",
        ),
        (
            {"input_image": image_uri(64, 64), "motion_bucket_id": 256},
            "- input.motion_bucket_id: Must be less than",
        ),
        ({"frames_per_second": 6}, "- input: input_image is required"),
    ],
)
def test_invalid_input_to_a_version_is_refused(values: dict[str, Any], line: str, client: Client) -> None:
    error = rejected(lambda: client.predictions.create(version=SVD.version, input=values))
    assert error.status == 422 and line in (error.detail or ""), error.detail


def test_the_422_body_lists_invalid_fields(fake: FakeReplicateServer, http: httpx.Client) -> None:
    response = http.post(
        f"{fake.base_url}/v1/models/kwaivgi/kling-v2.1/predictions",
        json={"input": {"prompt": "x", "duration": 7}, "webhok": "https://example.com"},
        headers={"Authorization": f"Token {TOKEN}"},
    )
    body = response.json()
    assert response.status_code == 422 and body["status"] == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert {(item["type"], item["field"]) for item in body["invalid_fields"]} == {
        ("additional_property_not_allowed", ""),
        ("required", "input"),
        ("enum", "input.duration"),
    }
    assert body["detail"].count("\n") == 3


def test_nullable_inputs_take_null(client: Client) -> None:
    created = veo(client, "nulls", image=None, last_frame=None, negative_prompt=None, seed=None)
    assert wait(client, created).status == "succeeded"


def test_models_endpoint_serves_only_official_models(client: Client) -> None:
    for model in ("stability-ai/stable-video-diffusion", "cuuupid/cogvideox-5b", "nobody/nothing"):
        error = rejected(lambda m=model: client.models.predictions.create(model=m, input={"prompt": "x"}))
        assert error.status == 404 and error.detail == "The requested resource could not be found."


def test_versions_are_checked(client: Client) -> None:
    unknown = "0" * 64
    error = rejected(lambda: client.predictions.create(version=unknown, input={"prompt": "x"}))
    assert error.status == 422 and error.title == "Invalid version or not permitted"
    assert unknown in (error.detail or "")
    error = rejected(
        lambda: client.predictions.create(version=f"cuuupid/cogvideox-5b:{SVD.version}", input={})
    )
    assert error.status == 422
    # An official model by its version, by owner/name:version and by bare name, as the API documents.
    veo_version = schema("google/veo-3.1").version
    for version in (veo_version, f"google/veo-3.1:{veo_version}", "google/veo-3.1"):
        created = client.predictions.create(
            version=version, input={"prompt": "v", "duration": 4, "resolution": "720p"}
        )
        assert created.model == "google/veo-3.1"


def test_auth_is_required(fake: FakeReplicateServer, http: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = http.get(f"{fake.base_url}/v1/predictions", headers=headers)
        assert response.status_code == 401 and response.json() == {
            "detail": "Invalid token.",
            "status": 401,
            "title": "Unauthenticated",
        }
    wrong, transport = make_client(fake.base_url, token="wrong")
    try:
        assert rejected(lambda: veo(wrong, "x")).status == 401
    finally:
        transport.close()
    assert http.get(f"{fake.base_url}/v1/predictions", headers={"Authorization": f"Token {TOKEN}"}).is_success


# --- failures the real model would produce --------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "values", "error"),
    [
        (
            "google/veo-3.1",
            {"prompt": "x", "image": "https://example.com/a.png"},
            "Could not download input image",
        ),
        (
            "google/veo-3.1",
            {"prompt": "x", "image": "data:image/png;base64,bm90IGFuIGltYWdl"},
            "not an image",
        ),
        ("minimax/hailuo-2.3", {"prompt": "x", "resolution": "1080p", "duration": 10}, "6-second"),
        ("google/veo-3.1", {"prompt": "x", "reference_images": [image_uri(32, 18)], "duration": 4}, "16:9"),
        (
            "kwaivgi/kling-v2.1",
            {"prompt": "x", "start_image": image_uri(32, 18), "end_image": image_uri(32, 18)},
            "pro",
        ),
    ],
)
def test_inputs_the_model_cannot_use_fail_the_prediction(
    model: str, values: dict[str, Any], error: str, fake: FakeReplicateServer, client: Client
) -> None:
    creates = fake.creates
    done = wait(client, client.models.predictions.create(model=model, input=values))
    assert fake.creates == creates + 1
    assert done.status == "failed" and error in (done.error or ""), done.error
    assert done.output is None and done.metrics and "predict_time" in done.metrics


def test_reference_images_work_at_16_9_and_8_s(client: Client, http: httpx.Client, tmp_path: Path) -> None:
    done = wait(
        client, veo(client, "r2v", duration=8, reference_images=[image_uri(64, 36), image_uri(36, 64)])
    )
    info = probe_output(http, done, tmp_path)
    assert (info.width, info.height, info.duration) == (1280, 720, 8.0)


# --- cancel and faults ----------------------------------------------------------------------------------


def test_a_hung_prediction_processes_until_canceled(fake: FakeReplicateServer, client: Client) -> None:
    fake.add_fault(Fault(kind="hang", match="hang-me"))
    created = veo(client, "please hang-me")
    time.sleep(0.3)
    assert client.predictions.get(created.id).status == "processing"
    cancels = fake.cancels
    canceled = client.predictions.cancel(created.id)
    assert canceled.status == "canceled" and canceled.completed_at
    assert client.predictions.get(created.id).status == "canceled"
    record = fake.prediction(created.id)
    assert record["canceled"] and record["cancel_requests"] == 1 and record["faults"] == ["hang"]
    assert fake.cancels == cancels + 1
    # Canceling a finished prediction changes nothing but is still recorded.
    assert client.predictions.cancel(created.id).status == "canceled"
    done = wait(client, veo(client, "finished"))
    assert client.predictions.cancel(done.id).status == "succeeded"
    assert not fake.prediction(done.id)["canceled"] and fake.cancels == cancels + 3
    assert rejected(lambda: client.predictions.cancel("nosuchprediction")).status == 404


def test_rate_limit_answers_429_with_the_reset_hint(
    fake: FakeReplicateServer, client: Client, http: httpx.Client
) -> None:
    fake.add_fault(Fault(kind="rate_limit", match="busy", seconds=2.5, times=2))
    creates, limited = fake.creates, fake.rejected_creates.get(429, 0)
    error = rejected(lambda: veo(client, "busy day"))
    assert error.status == 429 and error.detail == "Request was throttled. Your rate limit resets in ~3s."
    response = http.post(
        f"{fake.base_url}/v1/models/google/veo-3.1/predictions",
        json={"input": {"prompt": "busy night"}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert response.json()["status"] == 429
    assert fake.creates == creates and fake.rejected_creates[429] == limited + 2
    assert veo(client, "busy again").status == "starting"  # the fault fired twice and is used up


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_answer_the_create(status: int, fake: FakeReplicateServer, client: Client) -> None:
    fake.add_fault(Fault(kind="server_error", status=status, match=f"boom{status}"))
    creates = fake.creates
    error = rejected(lambda: veo(client, f"boom{status}"))
    assert error.status == status and fake.creates == creates


def test_connection_reset_drops_the_create(fake: FakeReplicateServer, client: Client) -> None:
    fake.add_fault(Fault(kind="connection_reset", match="cut"))
    creates, resets = fake.creates, fake.connection_resets
    with pytest.raises(httpx.TransportError):
        veo(client, "cut the line")
    assert fake.creates == creates and fake.connection_resets == resets + 1
    assert wait(client, veo(client, "cut again")).status == "succeeded"  # the same client carries on


def test_fail_fault_fails_the_prediction_with_its_error(fake: FakeReplicateServer, client: Client) -> None:
    flagged = "The input or output was flagged as sensitive (E005)"
    fake.add_fault(Fault(kind="fail", match="nsfw", error=flagged))
    done = wait(client, veo(client, "nsfw test"))
    assert done.status == "failed" and done.error == flagged
    assert fake.prediction(done.id)["faults"] == ["fail"]


def test_short_and_corrupt_outputs(
    fake: FakeReplicateServer, client: Client, http: httpx.Client, tmp_path: Path
) -> None:
    fake.add_fault(Fault(kind="short", match="short"), Fault(kind="corrupt", match="corrupt"))
    info = probe_output(http, wait(client, veo(client, "short one")), tmp_path)
    assert (info.width, info.height, info.duration) == (1280, 720, 2.0)
    corrupt = wait(client, veo(client, "corrupt one"))
    assert corrupt.status == "succeeded"
    assert fetch(http, corrupt, tmp_path / "corrupt.mp4").status_code == 200
    with pytest.raises(MediaError):
        probe(tmp_path / "corrupt.mp4")


def test_expired_and_flaky_downloads(fake: FakeReplicateServer, client: Client, http: httpx.Client) -> None:
    fake.add_fault(Fault(kind="expired", match="gone"), Fault(kind="download_error", match="flaky", times=2))
    gone = wait(client, veo(client, "gone soon"))
    assert gone.status == "succeeded" and gone.output
    assert http.get(output_url(gone)).status_code == 404
    assert fake.prediction(gone.id)["data_removed"]
    flaky = wait(client, veo(client, "flaky link"))
    assert [http.get(output_url(flaky)).status_code for _ in range(3)] == [500, 500, 200]
    record = fake.prediction(flaky.id)
    assert record["downloads"] == 3 and record["faults"] == ["download_error"]
    assert http.get(output_url(wait(client, veo(client, "flaky again")))).status_code == 200  # used up


def test_outputs_expire_after_the_retention_setting(
    fake: FakeReplicateServer, client: Client, http: httpx.Client
) -> None:
    done = wait(client, veo(client, "kept a while"))
    fake.expire_after_s = 0.0
    try:
        assert http.get(output_url(done)).status_code == 404
        again = client.predictions.get(done.id)
        assert again.status == "succeeded" and again.output is None
    finally:
        fake.expire_after_s = None
    assert http.get(output_url(done)).status_code == 200


def test_latency_fault_slows_one_prediction(fake: FakeReplicateServer, client: Client) -> None:
    fake.add_fault(Fault(kind="latency", match="slow", seconds=0.8))
    started = time.monotonic()
    created = veo(client, "slow one")
    time.sleep(0.4)
    assert client.predictions.get(created.id).status == "processing"
    assert wait(client, created).status == "succeeded"
    assert time.monotonic() - started >= 0.8


def test_match_and_times(fake: FakeReplicateServer, client: Client) -> None:
    fake.add_fault(Fault(kind="fail", match="[mt]", times=2), Fault(kind="short", match="[always]", times=-1))
    outcomes = [
        wait(client, veo(client, prompt)).status for prompt in ("plain", "[mt] 1", "[mt] 2", "[mt] 3")
    ]
    assert outcomes == ["succeeded", "failed", "failed", "succeeded"]
    for _ in range(3):
        assert fake.prediction(veo(client, "[always]").id)["faults"] == ["short"]
    assert [(fault.kind, fault.times) for fault in fake.faults] == [("short", -1)]


def test_list_error_answers_the_list_then_recovers(
    fake: FakeReplicateServer, client: Client, http: httpx.Client
) -> None:
    fake.add_fault(Fault(kind="list_error", status=502, times=2))
    for _ in range(2):
        error = rejected(client.predictions.list)
        assert error.status == 502 and error.detail == "Bad Gateway"
    assert fake.faults == []
    client.predictions.list()

    fake.add_fault(Fault(kind="list_error", status=500))
    response = http.get(f"{fake.base_url}/v1/predictions", headers=AUTH)
    assert response.status_code == 500 and response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"detail": "Internal Server Error", "status": 500}

    # While the list fails, creates and reads do not; after `lasts_s` the list answers again.
    fake.add_fault(Fault(kind="list_error", status=502, times=-1, lasts_s=1))
    assert rejected(client.predictions.list).status == 502
    created = veo(client, "made while the list fails")
    assert client.predictions.get(created.id).id == created.id
    assert rejected(client.predictions.list).status == 502
    while fake.faults:
        time.sleep(0.05)
    done = wait(client, created)
    assert done.status == "succeeded" and done.id in [p.id for p in client.predictions.list()]

    # The client retries a GET that gets 503 (or 504) by itself: these never reach the caller.
    fake.add_fault(Fault(kind="list_error", status=503, times=2))
    assert done.id in [p.id for p in client.predictions.list()]
    assert fake.faults == []


def wait_terminal(fake: FakeReplicateServer, prediction_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """The fake's record once the prediction ends (read from the fake: the client cannot read "aborted")."""
    deadline = time.monotonic() + timeout_s
    while not fake.state.is_terminal(prediction_id):
        assert time.monotonic() < deadline, f"{prediction_id} still running"
        time.sleep(0.02)
    return fake.prediction(prediction_id)


def test_an_aborted_prediction_is_terminal_unbilled_and_unreadable_by_the_client(http: httpx.Client) -> None:
    # Its own server: an aborted prediction in the shared one would spoil every later list().
    with FakeReplicateServer(token=TOKEN, latency_s=0.05) as fake:
        fake.add_fault(Fault(kind="abort", match="queued", seconds=0.2, times=2))
        client, transport = make_client(fake.base_url)
        try:
            ran = wait(client, veo(client, "runs"))
            created = veo(client, "queued too long")
            assert created.status == "starting"
            assert wait_terminal(fake, created.id)["status"] == "aborted"
            raw = http.get(f"{fake.base_url}/v1/predictions/{created.id}", headers=AUTH).json()
            assert raw["status"] == "aborted" and raw["output"] is None and raw["error"] is None
            assert raw["started_at"] is None and raw["completed_at"] and raw["metrics"] == {}
            listed = http.get(f"{fake.base_url}/v1/predictions", headers=AUTH).json()["results"]
            assert [(p["id"], p["status"]) for p in listed] == [
                (created.id, "aborted"),
                (ran.id, "succeeded"),
            ]

            # replicate 1.0.7 parses with pydantic.v1 and its status Literal lacks "aborted": get() fails,
            # and so does list() for the whole page. Not pydantic (v2)'s ValidationError, but a ValueError.
            with pytest.raises(V1ValidationError, match="given=aborted"):
                client.predictions.get(created.id)
            with pytest.raises(V1ValidationError, match="given=aborted") as caught:
                client.predictions.list()
            assert isinstance(caught.value, ValueError)
            assert not isinstance(caught.value, pydantic.ValidationError)
            # A create held open by `Prefer: wait` ends with it, and cannot be parsed either.
            with pytest.raises(V1ValidationError):
                client.models.predictions.create(
                    model="google/veo-3.1", input={"prompt": "queued again", "duration": 4}, wait=10
                )
            # Canceling an aborted prediction changes nothing.
            cancel = http.post(f"{fake.base_url}/v1/predictions/{created.id}/cancel", headers=AUTH)
            assert cancel.json()["status"] == "aborted"
        finally:
            transport.close()
        counters = fake.state.snapshot()["counters"]
        assert counters["creates"] == 3 and counters["in_flight"] == 0 and counters["billed"] == 1
        assert fake.billed == 1 and fake.prediction(ran.id)["billed"]
        record = fake.prediction(created.id)
        assert not record["billed"] and record["faults"] == ["abort"] and not record["canceled"]
        assert [p["status"] for p in fake.predictions] == ["succeeded", "aborted", "aborted"]


def test_cancel_after_aborts_before_the_start_and_cancels_while_running(http: httpx.Client) -> None:
    with FakeReplicateServer(token=TOKEN, latency_s=0.05) as fake:
        fake.add_fault(Fault(kind="abort", match="queued", seconds=60), Fault(kind="hang", match="stuck"))

        def create(prompt: str, cancel_after: str) -> httpx.Response:
            return http.post(
                f"{fake.base_url}/v1/models/google/veo-3.1/predictions",
                json={"input": {"prompt": prompt, "duration": 4}},
                headers=AUTH | {"Cancel-After": cancel_after},
            )

        for bad in ("4s", "4.9", "soon", "", "5ms", "-5s"):
            response = create("refused", bad)
            assert response.status_code == 400 and "Cancel-After" in response.json()["detail"], bad
        assert fake.creates == 0 and fake.rejected_creates == {400: 6}
        started = time.monotonic()
        queued, stuck, quick = (
            create(prompt, after).json()
            for prompt, after in [("queued", "5s"), ("stuck", "0m5"), ("quick", "2m")]
        )
        assert queued["status"] == stuck["status"] == "starting"
        for made, seconds in [(queued, 5), (stuck, 5), (quick, 120)]:
            lifetime = datetime.fromisoformat(made["deadline"]) - datetime.fromisoformat(made["created_at"])
            assert abs(lifetime.total_seconds() - seconds) < 0.01

        aborted, canceled = wait_terminal(fake, queued["id"]), wait_terminal(fake, stuck["id"])
        assert time.monotonic() - started >= 4.9
        assert aborted["status"] == "aborted" and aborted["started_at"] is None and not aborted["billed"]
        assert canceled["status"] == "canceled" and canceled["started_at"] and canceled["billed"]
        assert (
            "predict_time" in canceled["metrics"] and not canceled["canceled"]
        )  # the deadline, not a request
        assert wait_terminal(fake, quick["id"])["status"] == "succeeded"
        assert fake.billed == 2 and fake.in_flight == 0 and fake.cancels == 0


def test_fault_settings_are_checked() -> None:
    with pytest.raises(pydantic.ValidationError):
        Fault(kind="server_error", status=404)
    with pytest.raises(pydantic.ValidationError):
        Fault(kind="list_error", status=429)
    with pytest.raises(pydantic.ValidationError, match="match must be None"):
        Fault(kind="list_error", match="anything")
    with pytest.raises(pydantic.ValidationError):
        Fault(kind="fail", times=0)
    with pytest.raises(pydantic.ValidationError):
        Fault.model_validate({"kind": "explode"})


def test_concurrent_predictions_are_counted_in_flight() -> None:
    with FakeReplicateServer(latency_s=0.6) as fake:
        client, transport = make_client(fake.base_url)
        try:
            with ThreadPoolExecutor(6) as pool:
                created = list(pool.map(lambda n: veo(client, f"parallel {n}"), range(6)))
                done = list(pool.map(lambda p: wait(client, p), created))
        finally:
            transport.close()
        assert {p.status for p in done} == {"succeeded"}
        assert fake.creates == 6 and fake.max_in_flight == 6 and fake.in_flight == 0
        assert len({p.id for p in done}) == 6


def events_of(fake: FakeReplicateServer) -> list[tuple[str, str, int, str | None]]:
    return [(e.kind, e.prompt, e.in_flight, e.status) for e in fake.timeline]


def until(condition: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_timeline_shows_a_create_while_a_slow_download_is_open(http: httpx.Client) -> None:
    """A slow_download holds the answer open: a prediction created meanwhile comes between the download's
    start and finish on the timeline, with the predictions in flight after each event."""
    with FakeReplicateServer(token=TOKEN, latency_s=0.05) as fake:
        client, transport = make_client(fake.base_url)
        try:
            first = wait(client, veo(client, "first"))
            fake.add_fault(Fault(kind="slow_download", match="first", seconds=1.0), Fault(kind="hang"))
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(http.get, output_url(first))
                until(lambda: fake.timeline[-1].kind == "download_started")
                second = veo(client, "second")  # hangs: ends only when canceled below
                answer = held.result()
            client.predictions.cancel(second.id)
        finally:
            transport.close()
        assert answer.status_code == 200 and answer.content == http.get(output_url(first)).content
        assert events_of(fake) == [
            ("created", "first", 1, None),
            ("ended", "first", 0, "succeeded"),
            ("download_started", "first", 0, None),
            ("created", "second", 1, None),
            ("download_finished", "first", 1, "200"),
            ("ended", "second", 0, "canceled"),
            ("download_started", "first", 0, None),  # the second download: not held (times=1)
            ("download_finished", "first", 0, "200"),
        ]
        assert [e.prediction_id for e in fake.timeline][:3] == [first.id] * 3
        assert fake.prediction(first.id)["faults"] == ["slow_download"]


def test_the_timeline_records_failed_downloads_not_heads_and_is_served_and_reset(http: httpx.Client) -> None:
    with FakeReplicateServer(token=TOKEN, latency_s=0.05) as fake:
        client, transport = make_client(fake.base_url)
        try:
            done = wait(client, veo(client, "flaky"))
        finally:
            transport.close()
        fake.add_fault(Fault(kind="download_error", match="flaky"))
        assert http.head(output_url(done)).status_code == 200  # a HEAD is no download
        assert [http.get(output_url(done)).status_code for _ in range(2)] == [500, 200]
        assert [(kind, status) for kind, _, _, status in events_of(fake)] == [
            ("created", None),
            ("ended", "succeeded"),
            ("download_started", None),
            ("download_finished", "500"),
            ("download_started", None),
            ("download_finished", "200"),
        ]
        served = http.get(f"{fake.base_url}/_fake/timeline").json()
        assert served == [event.as_json() for event in fake.timeline]
        assert served[0]["prediction_id"] == done.id and served[0]["prompt"] == "flaky"
        assert http.post(f"{fake.base_url}/_fake/faults", json={"kind": "slow_download", "seconds": 2})
        assert fake.faults == [Fault(kind="slow_download", seconds=2)]
        fake.reset()
        assert fake.timeline == [] and http.get(f"{fake.base_url}/_fake/timeline").json() == []


# --- admin endpoints and running it in another process --------------------------------------------------


def test_admin_endpoints(http: httpx.Client) -> None:
    with FakeReplicateServer(latency_s=0.05) as fake:
        admin = f"{fake.base_url}/_fake"
        faults = [{"kind": "rate_limit", "seconds": 4}, {"kind": "fail", "match": "x", "times": -1}]
        assert [f["kind"] for f in http.post(f"{admin}/faults", json=faults).json()] == ["rate_limit", "fail"]
        assert http.post(f"{admin}/faults", json={"kind": "hang", "times": 0}).status_code == 422
        assert len(http.get(f"{admin}/faults").json()) == 2
        assert http.delete(f"{admin}/faults").json() == [] and fake.faults == []
        assert http.patch(f"{admin}/config", json={"latency_s": 0.01}).json()["latency_s"] == 0.01
        assert fake.latency_s == 0.01

        client, transport = make_client(fake.base_url)
        try:
            done = wait(client, veo(client, "admin"))
        finally:
            transport.close()
        state = http.get(f"{admin}/state").json()
        assert state["counters"]["creates"] == 1 and state["counters"]["max_in_flight"] == 1
        assert [p["id"] for p in state["predictions"]] == [done.id]
        assert http.get(f"{admin}/predictions/{done.id}").json()["status"] == "succeeded"
        assert http.post(f"{admin}/reset").json()["predictions"] == []
        assert fake.creates == 0 and fake.predictions == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_fake_runs_in_its_own_process(http: httpx.Client) -> None:
    port = free_port()
    code = "from staging.fake_replicate.server import serve; "
    code += f"serve('127.0.0.1', {port}, token=None, latency_s=0.1)"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    with subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as process:
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    http.get(f"{base}/_fake/state")
                    break
                except httpx.TransportError:
                    assert process.poll() is None and time.monotonic() < deadline
                    time.sleep(0.05)
            http.post(f"{base}/_fake/faults", json=[{"kind": "server_error", "status": 502}])
            client, transport = make_client(base, token="anything")
            try:
                assert rejected(lambda: veo(client, "remote")).status == 502
                assert wait(client, veo(client, "remote")).status == "succeeded"
            finally:
                transport.close()
            counters = http.get(f"{base}/_fake/state").json()["counters"]
            assert counters["creates"] == 1 and counters["rejected_creates"] == {"502": 1}
        finally:
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr.decode()
    assert b"Uvicorn running on" in stderr


# --- rules, schemas and the render cache ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "values", "image", "expected"),
    [
        ("kwaivgi/kling-v2.1", {"mode": "standard", "duration": 5}, (1080, 1920), (720, 1280, 120, 24)),
        ("kwaivgi/kling-v2.1", {"mode": "pro", "duration": 10}, (1920, 1080), (1920, 1080, 240, 24)),
        (
            "kwaivgi/kling-v2.5-turbo-pro",
            {"aspect_ratio": "9:16", "duration": 5},
            None,
            (1080, 1920, 120, 24),
        ),
        ("kwaivgi/kling-v2.5-turbo-pro", {"aspect_ratio": "1:1", "duration": 5}, None, (1080, 1080, 120, 24)),
        (
            "kwaivgi/kling-v2.5-turbo-pro",
            {"aspect_ratio": "9:16", "duration": 10},
            (800, 600),
            (1440, 1080, 240, 24),
        ),
        ("minimax/hailuo-2.3", {"resolution": "768p", "duration": 10}, None, (1366, 768, 250, 25)),
        ("minimax/hailuo-2.3", {"resolution": "1080p", "duration": 6}, (1000, 1000), (1080, 1080, 150, 25)),
        ("wan-video/wan-2.5-i2v", {"resolution": "480p", "duration": 5}, (1280, 720), (854, 480, 120, 24)),
        (
            "wan-video/wan-2.5-i2v",
            {"resolution": "1080p", "duration": 10},
            (720, 1280),
            (1080, 1920, 240, 24),
        ),
        (
            "google/veo-3.1",
            {"aspect_ratio": "16:9", "resolution": "1080p", "duration": 8},
            (9, 16),
            (1920, 1080, 192, 24),
        ),
        (
            "google/veo-3.1-fast",
            {"aspect_ratio": "9:16", "resolution": "720p", "duration": 4},
            None,
            (720, 1280, 96, 24),
        ),
        (
            "stability-ai/stable-video-diffusion",
            {
                "video_length": "14_frames_with_svd",
                "frames_per_second": 30,
                "sizing_strategy": "use_image_dimensions",
            },
            (2048, 1024),
            (1024, 512, 14, 31),
        ),
        ("cuuupid/cogvideox-5b", {}, None, (720, 480, 49, 8)),
        ("thudm/cogvideox-i2v", {}, (1024, 1024), (720, 480, 49, 8)),
    ],
)
def test_output_rules(
    model: str, values: dict[str, Any], image: tuple[int, int] | None, expected: tuple[int, int, int, int]
) -> None:
    assert plan_output(model, schema(model).with_defaults(values), image) == OutputPlan(*expected)


def test_schemas_match_the_catalog() -> None:
    assert len(all_schemas()) == len(list((Path(clipgen.__file__).parent / "model_schemas").glob("*.json")))
    for spec in MODELS.values():
        found = schema(spec.replicate_model)
        if spec.version:
            assert found.version == spec.version and not found.official
        else:
            assert found.official
    assert schema("thudm/cogvideox-i2v").version == fake_version("thudm/cogvideox-i2v")


def test_every_schema_keyword_is_checked_or_only_describes() -> None:
    """The fake validates with draft 4 plus OpenAPI's `nullable`; the rest only describe an input. A keyword
    outside both (or a format it cannot check) would be silently ignored, so a new one fails here."""
    checked = set(Draft4Validator.META_SCHEMA["properties"]) | {"nullable"}
    describing = {"x-order", "deprecated", "writeOnly", "x-cog-secret"}
    formats = set()
    for each in all_schemas():
        for prop in each.properties.values():
            assert set(prop) <= checked | describing, each.model
            formats |= {prop.get("format"), (prop.get("items") or {}).get("format")}
    assert formats <= {None, "uri", "password"}


def test_renders_are_cached(tmp_path: Path) -> None:
    cache = RenderCache(tmp_path)
    plan = OutputPlan(64, 36, 6, 6)
    first = cache.render(plan, None, None)
    stamp = first.stat().st_mtime_ns
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: cache.render(plan, None, None), range(4)))
    assert set(paths) == {first} and first.stat().st_mtime_ns == stamp
    assert cache.render(plan.shortened(), None, None) != first
