"""The fake Replicate API serves any model by its published schema, driven by the real `replicate` client.

GET /v1/models/{owner}/{name} answers in the real shape (enums behind `$ref`s), a model can come from a
folder of schema files or `POST /_fake/schemas` (also replacing a built-in one: drift), creates are validated
against whatever schema is served, and every schema the product ships renders a clip of the shape asked for.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from PIL import Image
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction

import clipgen
from clipgen.media import VideoInfo, probe
from staging.fake_replicate import FakeReplicateServer, Fault
from staging.fake_replicate.openapi import to_openapi
from staging.fake_replicate.outputs import OutputPlan, generic_plan, plan_output
from staging.fake_replicate.schemas import ModelSchema, by_model, fake_version

REPO = Path(__file__).resolve().parent.parent
TOKEN = "models-token"
SCHEMA_FILES = sorted((Path(clipgen.__file__).parent / "model_schemas").glob("*.json"))
TERMINAL = ("succeeded", "failed", "canceled")

# A model the catalog has never seen: every size/length input the generic output rule reads.
TINY = {
    "model": "acme/tiny-video",
    "version": None,
    "type": "object",
    "title": "Input",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "maxLength": 40, "x-order": 0},
        "image": {"type": "string", "format": "uri", "nullable": True, "x-order": 1},
        "aspect_ratio": {"type": "string", "enum": ["16:9", "9:16", "4:3"], "nullable": True, "x-order": 2},
        "resolution": {"type": "string", "enum": ["360p", "480p"], "default": "360p", "x-order": 3},
        "duration": {"type": "integer", "minimum": 1, "maximum": 4, "default": 2, "x-order": 4},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2, "default": []},
    },
    "output": {"type": "string", "format": "uri", "title": "Output"},
    "notes": ["written by tests/test_fake_models.py"],
}
# A community model: run by version, sized by its image, timed by frames.
FRAMES = {
    "model": "someone/frame-clip",
    "version": "ab" * 32,
    "is_official": False,
    "required": ["input_image"],
    "properties": {
        "input_image": {"type": "string", "format": "uri"},
        "num_frames": {"type": "integer", "minimum": 8, "maximum": 48, "default": 16},
        "frames_per_second": {"type": "integer", "default": 8},
    },
}
# Kling v2.6 as it might drift: start_image renamed, a new required input, a narrowed duration enum.
KLING_DRIFTED = {
    "model": "kwaivgi/kling-v2.6",
    "version": "cd" * 32,
    "required": ["prompt", "style"],
    "properties": {
        "prompt": {"type": "string"},
        "first_frame": {"type": "string", "format": "uri", "nullable": True},
        "style": {"type": "string", "enum": ["cinematic", "anime"]},
        "aspect_ratio": {"type": "string", "enum": ["16:9", "9:16"], "default": "16:9"},
        "duration": {"type": "integer", "enum": [5], "default": 5},
    },
}


# --- fixtures and helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeReplicateServer]:
    folder = tmp_path_factory.mktemp("schemas")
    for number, raw in enumerate((TINY, FRAMES, KLING_DRIFTED)):
        (folder / f"{number}.json").write_text(json.dumps(raw))
    with FakeReplicateServer(token=TOKEN, latency_s=0.01, schemas_dir=folder) as server:
        yield server


@pytest.fixture(scope="module")
def published() -> Iterator[FakeReplicateServer]:
    """A fake with the built-in schemas only."""
    with FakeReplicateServer(token=TOKEN, latency_s=0.01) as server:
        yield server


def make_client(server: FakeReplicateServer) -> tuple[Client, httpx.HTTPTransport]:
    transport = httpx.HTTPTransport()  # the client never closes its pool; the test does
    return Client(api_token=TOKEN, base_url=server.base_url, transport=transport), transport


@pytest.fixture
def client(fake: FakeReplicateServer) -> Iterator[Client]:
    replicate, transport = make_client(fake)
    yield replicate
    transport.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as session:
        yield session


def image_uri(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 90, 40)).save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def wait(client: Client, prediction: Prediction, timeout_s: float = 60) -> Prediction:
    deadline = time.monotonic() + timeout_s
    while prediction.status not in TERMINAL:
        assert time.monotonic() < deadline, f"{prediction.id} still {prediction.status}"
        time.sleep(0.02)
        prediction = client.predictions.get(prediction.id)
    return prediction


def rendered(client: Client, http: httpx.Client, prediction: Prediction, tmp_path: Path) -> VideoInfo:
    done = wait(client, prediction)
    assert done.status == "succeeded", done.error
    assert isinstance(done.output, str)
    response = http.get(done.output)
    assert response.status_code == 200
    dest = tmp_path / f"{done.id}.mp4"
    dest.write_bytes(response.content)
    return probe(dest)


def shape(info: VideoInfo) -> tuple[int, int, float]:
    return info.width, info.height, round(info.duration, 2)


def rejected(call: Any) -> ReplicateError:
    with pytest.raises(ReplicateError) as caught:
        call()
    return caught.value


def model_answer(server: FakeReplicateServer, model: str) -> dict[str, Any]:
    """GET /v1/models/{model} as JSON (the client's Model drops `is_official`)."""
    answer = httpx.get(f"{server.base_url}/v1/models/{model}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def input_schema(client: Client, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Input schema GET /v1/models serves, and the document's components."""
    found = client.models.get(model)
    assert found.latest_version is not None
    components: dict[str, Any] = found.latest_version.openapi_schema["components"]["schemas"]
    return components["Input"], components


# --- GET /v1/models/{owner}/{name} ----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["google/veo-3.1", "openai/sora-2", "bytedance/seedance-2.0"])
def test_a_model_is_served_with_its_openapi_schema_and_ref_enums(
    fake: FakeReplicateServer, client: Client, model: str
) -> None:
    schema = by_model(model)
    assert schema is not None
    found = client.models.get(model)
    assert (found.owner, found.name, found.visibility) == (*model.split("/"), "public")
    assert model_answer(fake, model)["is_official"] is True
    assert found.latest_version and found.latest_version.id == schema.version
    inputs, components = input_schema(client, model)
    assert inputs["required"] == list(schema.required) and components["Output"]["format"] == "uri"
    assert set(inputs["properties"]) == set(schema.properties)
    for name, prop in schema.properties.items():
        served = inputs["properties"][name]
        if "enum" in prop:
            assert served["allOf"] == [{"$ref": f"#/components/schemas/{name}"}]
            assert "enum" not in served and served.get("default") == prop.get("default")
            assert components[name] == {
                "title": name,
                "description": "An enumeration.",
                "enum": prop["enum"],
                "type": prop["type"],
            }
        else:
            assert served == prop  # nullable, format, bounds and items as published


def test_sora_keeps_its_secret_and_nullable_inputs_inline(client: Client) -> None:
    inputs, components = input_schema(client, "openai/sora-2")
    assert inputs["properties"]["openai_api_key"]["format"] == "password"
    assert inputs["properties"]["input_reference"]["nullable"] is True
    assert components["seconds"]["type"] == "integer" and components["seconds"]["enum"] == [4, 8, 12]
    assert components["aspect_ratio"]["enum"] == ["portrait", "landscape"]


def test_community_models_are_served_too_and_their_version_by_id(
    fake: FakeReplicateServer, client: Client
) -> None:
    assert model_answer(fake, "stability-ai/stable-video-diffusion")["is_official"] is False
    found = client.models.get("stability-ai/stable-video-diffusion")
    assert found.latest_version is not None
    version = found.versions.get(found.latest_version.id)
    assert version.openapi_schema == found.latest_version.openapi_schema
    thudm = client.models.get("thudm/cogvideox-i2v").latest_version
    assert thudm is not None and thudm.id == fake_version("thudm/cogvideox-i2v")


def test_an_unknown_model_or_version_is_404(client: Client) -> None:
    error = rejected(lambda: client.models.get("nobody/nothing"))
    assert error.status == 404 and error.detail == "Not found."
    veo = client.models.get("google/veo-3.1")
    assert rejected(lambda: veo.versions.get("0" * 64)).status == 404


def test_a_model_error_fault_answers_the_model_read(fake: FakeReplicateServer, client: Client) -> None:
    fake.add_fault(Fault(kind="model_error", match="sora", status=500))
    try:
        assert client.models.get("google/veo-3.1").latest_version is not None  # not matched
        assert rejected(lambda: client.models.get("openai/sora-2")).status == 500
        assert client.models.get("openai/sora-2").latest_version is not None  # used up
    finally:
        fake.clear_faults()


def test_to_openapi_is_pure_and_leaves_the_schema_alone() -> None:
    schema = by_model("kwaivgi/kling-v2.1")
    assert schema is not None
    before = json.dumps(schema.properties, sort_keys=True)
    document = to_openapi(schema)
    document["components"]["schemas"]["Input"]["properties"]["prompt"]["type"] = "changed"
    document["components"]["schemas"]["mode"]["enum"].append("changed")
    assert json.dumps(schema.properties, sort_keys=True) == before
    assert to_openapi(schema)["components"]["schemas"]["mode"]["enum"] == ["standard", "pro"]


# --- models the catalog has never seen ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"aspect_ratio": "4:3", "resolution": "480p", "duration": 3}, (640, 480, 3.0)),
        ({"aspect_ratio": "9:16"}, (360, 640, 2.0)),  # the defaults: 360p, 2 s
        ({"image": image_uri(72, 128), "duration": 1}, (360, 640, 1.0)),  # no ratio asked: the image's
        ({"image": image_uri(128, 72), "aspect_ratio": "9:16", "duration": 1}, (360, 640, 1.0)),
    ],
)
def test_a_model_from_the_schemas_folder_runs_in_the_shape_asked_for(
    fake: FakeReplicateServer,
    client: Client,
    http: httpx.Client,
    tmp_path: Path,
    values: dict[str, Any],
    expected: tuple[int, int, float],
) -> None:
    assert model_answer(fake, "acme/tiny-video")["is_official"] is True
    found = client.models.get("acme/tiny-video")
    assert found.latest_version
    assert found.latest_version.id == fake_version("acme/tiny-video")
    created = client.models.predictions.create(model="acme/tiny-video", input={"prompt": "a kite"} | values)
    assert created.model == "acme/tiny-video"
    info = rendered(client, http, created, tmp_path)
    assert shape(info) == expected and info.fps == 24.0


def test_a_community_model_from_the_folder_runs_by_version(
    fake: FakeReplicateServer, client: Client, http: httpx.Client, tmp_path: Path
) -> None:
    assert model_answer(fake, "someone/frame-clip")["is_official"] is False
    values = {"input_image": image_uri(64, 48), "num_frames": 12, "frames_per_second": 6}
    created = client.predictions.create(version=FRAMES["version"], input=values)
    info = rendered(client, http, created, tmp_path)
    assert shape(info) == (960, 720, 2.0) and info.fps == 6.0
    creates = fake.creates
    error = rejected(lambda: client.models.predictions.create(model="someone/frame-clip", input=values))
    assert error.status == 404 and fake.creates == creates


def test_a_model_posted_at_run_time_runs_and_delete_restores_the_start(
    fake: FakeReplicateServer, client: Client, http: httpx.Client, tmp_path: Path
) -> None:
    posted = {
        "model": "acme/posted",
        "version": "ef" * 32,
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string"},
            "size": {"type": "string", "enum": ["640*360", "360*640"], "default": "640*360"},
            "seconds": {"type": "integer", "enum": [2, 4], "default": 4},
        },
    }
    admin = f"{fake.base_url}/_fake/schemas"
    try:
        answer = http.post(admin, json=posted)
        assert answer.status_code == 201 and answer.json()["latest_version"]["id"] == "ef" * 32
        assert "acme/posted" in http.get(admin).json()
        inputs, _ = input_schema(client, "acme/posted")
        assert inputs["properties"]["size"]["allOf"] == [{"$ref": "#/components/schemas/size"}]
        created = client.models.predictions.create(
            model="acme/posted", input={"prompt": "p", "size": "360*640", "seconds": 2}
        )
        assert shape(rendered(client, http, created, tmp_path)) == (360, 640, 2.0)
        assert http.post(admin, json=posted | {"version": "ee" * 32}).status_code == 200  # replaced
        assert client.models.get("acme/posted").latest_version.id == "ee" * 32  # type: ignore[union-attr]
    finally:
        held = http.delete(admin).json()
    assert "acme/posted" not in held and {"acme/tiny-video", "someone/frame-clip"} <= set(held)
    assert rejected(lambda: client.models.get("acme/posted")).status == 404
    assert client.models.get("kwaivgi/kling-v2.6").latest_version.id == "cd" * 32  # type: ignore[union-attr]


def test_a_bad_posted_schema_is_refused_naming_what_is_wrong(
    fake: FakeReplicateServer, http: httpx.Client
) -> None:
    admin = f"{fake.base_url}/_fake/schemas"
    for body, words in [
        ({"model": "no-slash", "properties": {}}, "`model` must be owner/name"),
        ({"model": "a/b", "properties": {"x": {"type": "strin"}}}, "input properties.x.type"),
        ({"model": "a/b", "properties": {}, "required": ["x"]}, "`required`"),
        ({"model": "a/b", "version": "v1", "properties": {}}, "`version`"),
    ]:
        answer = http.post(admin, json=body)
        assert answer.status_code == 422 and words in answer.json()["detail"], answer.json()
    assert "a/b" not in http.get(admin).json()


def test_a_schema_can_be_posted_as_the_api_serves_it(fake: FakeReplicateServer, http: httpx.Client) -> None:
    """A version's openapi_schema (enums behind $refs), e.g. copied from Replicate, serves the same inputs."""
    served = model_answer(fake, "openai/sora-2")["latest_version"]["openapi_schema"]
    copy = {"model": "acme/sora-copy", "version": "12" * 32, "openapi_schema": served}
    try:
        assert http.post(f"{fake.base_url}/_fake/schemas", json=copy).status_code == 201
        again = model_answer(fake, "acme/sora-copy")["latest_version"]["openapi_schema"]
        assert again["components"] == served["components"]
        error = http.post(
            f"{fake.base_url}/v1/models/acme/sora-copy/predictions",
            json={"input": {"prompt": "x", "seconds": 5}},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ).json()
        assert "seconds must be one of the following: 4, 8, 12" in error["detail"]
    finally:
        fake.restore_schemas()


def test_reset_restores_the_schemas_too(http: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    with FakeReplicateServer(schemas_dir=tmp_path, latency_s=0.01) as fake:
        fake.add_schema(FRAMES)
        assert fake.state.schemas.by_model("someone/frame-clip") is not None
        http.post(f"{fake.base_url}/_fake/reset")
        assert fake.state.schemas.by_model("someone/frame-clip") is None
        assert fake.state.schemas.by_model("acme/tiny-video") is not None


# --- drift: a built-in schema replaced ------------------------------------------------------------------


def test_a_drifted_schema_is_what_is_served_and_validated(
    fake: FakeReplicateServer, client: Client, http: httpx.Client, tmp_path: Path
) -> None:
    inputs, components = input_schema(client, "kwaivgi/kling-v2.6")
    assert inputs["required"] == ["prompt", "style"] and "start_image" not in inputs["properties"]
    assert components["duration"]["enum"] == [5]
    creates = fake.creates
    as_catalogued = {"prompt": "a fox", "start_image": image_uri(64, 36), "duration": 10}
    error = rejected(
        lambda: client.models.predictions.create(model="kwaivgi/kling-v2.6", input=as_catalogued)
    )
    lines = set((error.detail or "").splitlines())
    assert error.status == 422 and fake.creates == creates
    assert lines == {
        "- input: style is required",
        "- input: Additional property start_image is not allowed",
        "- input.duration: duration must be one of the following: 5",
    }
    drifted = {"prompt": "a fox", "style": "anime", "first_frame": image_uri(36, 64)}
    created = client.models.predictions.create(model="kwaivgi/kling-v2.6", input=drifted)
    assert shape(rendered(client, http, created, tmp_path)) == (1080, 1920, 5.0)  # Kling follows its image


# --- refusals of the new keywords -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "values", "line"),
    [
        ("bytedance/seedance-2.0", {"prompt": "x" * 4001}, "- input.prompt: String length must be less than"),
        (
            "acme/tiny-video",
            {"prompt": "x" * 41},
            "- input.prompt: String length must be less than or equal to 40",
        ),
        (
            "acme/tiny-video",
            {"prompt": "x", "tags": ["a", "b", "c"]},
            "- input.tags: Array must have at most 2",
        ),
        (
            "acme/tiny-video",
            {"prompt": "x", "duration": 5},
            "- input.duration: Must be less than or equal to 4",
        ),
        (
            "acme/tiny-video",
            {"prompt": "x", "aspect_ratio": "1:1"},
            "aspect_ratio must be one of the following",
        ),
        (
            "openai/sora-2",
            {"prompt": "x", "seconds": 5},
            "- input.seconds: seconds must be one of the following: 4, 8, 12",
        ),
        ("openai/sora-2", {"prompt": "x", "aspect_ratio": "16:9"}, '"portrait", "landscape"'),
        (
            "openai/sora-2",
            {"prompt": "x", "openai_api_key": 5},
            "input.openai_api_key: Invalid type. Expected: string, given: integer",
        ),
        (
            "kwaivgi/kling-v3-video",
            {"prompt": "x", "duration": 16},
            "- input.duration: Must be less than or equal to 15",
        ),
        (
            "kwaivgi/kling-v3-video",
            {"prompt": "x", "duration": 2},
            "- input.duration: Must be greater than or equal to 3",
        ),
        (
            "bytedance/seedance-1-lite",
            {"prompt": "x", "reference_images": ["a.png"]},
            "- input.reference_images.0: Does not match format 'uri'",
        ),
        ("minimax/hailuo-2.3-fast", {"prompt": "x"}, "- input: first_frame_image is required"),
        ("luma/ray-2-720p", {"prompt": "x", "duration": 7}, "duration must be one of the following: 5, 9"),
    ],
)
def test_a_bad_value_for_a_new_model_is_422_naming_the_field(
    fake: FakeReplicateServer, client: Client, model: str, values: dict[str, Any], line: str
) -> None:
    creates = fake.creates
    error = rejected(lambda: client.models.predictions.create(model=model, input=values))
    assert error.status == 422 and error.title == "Input validation failed"
    assert line in (error.detail or ""), error.detail
    assert fake.creates == creates


def test_nulls_are_taken_where_the_schema_says_nullable(fake: FakeReplicateServer, client: Client) -> None:
    values = {"prompt": "x", "openai_api_key": None, "input_reference": None, "seconds": 4}
    assert (
        wait(client, client.models.predictions.create(model="openai/sora-2", input=values)).status
        == "succeeded"
    )
    error = rejected(
        lambda: client.models.predictions.create(
            model="openai/sora-2", input={"prompt": "x", "seconds": None}
        )
    )
    assert "input.seconds: Invalid type. Expected: integer, given: null" in (error.detail or "")


def test_the_422_body_lists_the_new_kinds(fake: FakeReplicateServer, http: httpx.Client) -> None:
    answer = http.post(
        f"{fake.base_url}/v1/models/acme/tiny-video/predictions",
        json={"input": {"prompt": "x" * 41, "tags": ["a", "b", "c"], "duration": 0}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 422
    kinds = {(item["type"], item["field"]) for item in answer.json()["invalid_fields"]}
    assert kinds == {
        ("string_lte", "input.prompt"),
        ("array_max_items", "input.tags"),
        ("number_gte", "input.duration"),
    }


# --- every schema the product ships renders ------------------------------------------------------------


class Shape(NamedTuple):
    """A schema file's test: inputs sent besides the prompt (smaller and shorter than the defaults, to keep
    the suite fast), its first-frame image input (and whether required), and the landscape clip expected
    (width, height, seconds; the portrait one is the same turned, unless `portrait` says otherwise)."""

    values: dict[str, Any]
    image: str | None
    image_required: bool
    landscape: tuple[int, int, float]
    portrait: tuple[int, int, float] | None = None


SHAPES: dict[str, Shape] = {
    "bytedance/seedance-1-lite": Shape(
        {"resolution": "480p", "duration": 2}, "image", False, (854, 480, 2.0)
    ),
    "bytedance/seedance-1-pro": Shape({"resolution": "480p", "duration": 2}, "image", False, (854, 480, 2.0)),
    "bytedance/seedance-2.0": Shape(
        {"resolution": "480p", "duration": 2, "generate_audio": False}, "image", False, (854, 480, 2.0)
    ),
    "cuuupid/cogvideox-5b": Shape({}, None, False, (720, 480, 6.12)),
    "google/veo-3.1-fast": Shape({"resolution": "720p", "duration": 4}, "image", False, (1280, 720, 4.0)),
    "google/veo-3.1-lite": Shape({"duration": 4}, "image", False, (1280, 720, 4.0)),
    "google/veo-3.1": Shape({"resolution": "720p", "duration": 4}, "image", False, (1280, 720, 4.0)),
    "kwaivgi/kling-v2.1": Shape({}, "start_image", True, (1280, 720, 5.0)),
    "kwaivgi/kling-v2.5-turbo-pro": Shape({}, "start_image", False, (1920, 1080, 5.0)),
    "kwaivgi/kling-v2.6": Shape({"generate_audio": False}, "start_image", False, (1920, 1080, 5.0)),
    "kwaivgi/kling-v3-video": Shape(
        {"mode": "standard", "duration": 3}, "start_image", False, (1280, 720, 3.0)
    ),
    "luma/ray-2-720p": Shape({}, "start_image", False, (1280, 720, 5.0)),
    "minimax/hailuo-02": Shape({"resolution": "512p"}, "first_frame_image", False, (910, 512, 6.0)),
    "minimax/hailuo-2.3-fast": Shape({}, "first_frame_image", True, (1366, 768, 6.0)),
    "minimax/hailuo-2.3": Shape({}, "first_frame_image", False, (1366, 768, 6.0)),
    "openai/sora-2": Shape({}, "input_reference", False, (1280, 720, 4.0)),
    "pixverse/pixverse-v5": Shape({"quality": "360p"}, "image", False, (640, 360, 5.0)),
    "stability-ai/stable-video-diffusion": Shape({}, "input_image", True, (256, 128, 2.0)),
    "thudm/cogvideox-i2v": Shape({}, "image", True, (720, 480, 6.12), portrait=(720, 480, 6.12)),
    "wan-video/wan-2.5-i2v": Shape({"resolution": "480p"}, "image", True, (854, 480, 5.0)),
    "wan-video/wan-2.5-t2v": Shape({}, None, False, (832, 480, 5.0)),
}
LANDSCAPE_IMAGE, PORTRAIT_IMAGE = image_uri(256, 144), image_uri(144, 256)


def ratio_input(schema: ModelSchema, portrait: bool) -> dict[str, Any]:
    """How the model is asked for 16:9 or 9:16, if it can be: `aspect_ratio` (W:H or landscape/portrait) or
    `size` (the smallest W*H of that orientation)."""
    options = schema.properties.get("aspect_ratio", {}).get("enum", [])
    for wanted in ("9:16", "portrait") if portrait else ("16:9", "landscape"):
        if wanted in options:
            return {"aspect_ratio": wanted}
    sizes = [size for size in schema.properties.get("size", {}).get("enum", []) if "*" in size]
    turned = [size for size in sizes if (int(size.split("*")[0]) < int(size.split("*")[1])) == portrait]
    return {"size": min(turned, key=lambda size: int(size.split("*")[0]))} if turned else {}


def test_every_schema_file_has_a_shape_case() -> None:
    assert {json.loads(path.read_text())["model"] for path in SCHEMA_FILES} == set(SHAPES)


def shape_cases(schema: ModelSchema, case: Shape) -> Iterator[tuple[bool, bool, dict[str, Any]]]:
    """(portrait?, with an image?, how the ratio is asked) for each run a model can make."""
    for portrait in (False, True):
        asked = ratio_input(schema, portrait)
        for with_image in (False, True) if case.image else (False,):
            if case.image_required and not with_image:
                continue
            if portrait and not asked and not with_image and case.portrait is None:
                continue  # neither a ratio input nor an image: the model cannot be asked for 9:16
            yield portrait, with_image, asked


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_every_schema_renders_at_16_9_and_9_16_with_and_without_an_image(
    published: FakeReplicateServer, http: httpx.Client, tmp_path: Path, model: str
) -> None:
    schema, case = by_model(model), SHAPES[model]
    assert schema is not None
    client, transport = make_client(published)
    runs = []
    try:
        # Created together, so the fake renders them in parallel.
        for portrait, with_image, asked in shape_cases(schema, case):
            values = {"prompt": "a lighthouse at dusk"} | case.values | asked
            if with_image and case.image:
                values[case.image] = PORTRAIT_IMAGE if portrait else LANDSCAPE_IMAGE
            if "prompt" not in schema.properties:
                del values["prompt"]
            if schema.official:
                created = client.models.predictions.create(model=model, input=values)
            else:
                created = client.predictions.create(version=schema.version, input=values)
            runs.append((portrait, with_image, created))
        for portrait, with_image, created in runs:
            turned = case.portrait or (case.landscape[1], case.landscape[0], case.landscape[2])
            expected = turned if portrait else case.landscape
            assert shape(rendered(client, http, created, tmp_path)) == expected, (portrait, with_image)
    finally:
        transport.close()
    ran = {portrait for portrait, _, _ in runs}
    assert ran == {False, True} or model == "cuuupid/cogvideox-5b"


# --- the rules of the newer models ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "values", "image", "expected"),
    [
        ("kwaivgi/kling-v3-video", {"mode": "4k", "duration": 15}, None, (3840, 2160, 360, 24)),
        ("kwaivgi/kling-v3-video", {"aspect_ratio": "16:9"}, (600, 800), (1080, 1440, 120, 24)),
        ("kwaivgi/kling-v2.6", {"aspect_ratio": "1:1"}, None, (1080, 1080, 120, 24)),
        ("minimax/hailuo-02", {"resolution": "512p"}, (800, 600), (682, 512, 150, 25)),
        ("minimax/hailuo-2.3-fast", {"duration": 10}, (720, 1280), (768, 1366, 250, 25)),
        ("bytedance/seedance-1-pro", {"aspect_ratio": "21:9"}, (600, 800), (1080, 1440, 120, 24)),
        ("bytedance/seedance-1-lite", {"aspect_ratio": "21:9"}, None, (1680, 720, 120, 24)),
        (
            "bytedance/seedance-2.0",
            {"aspect_ratio": "adaptive", "duration": -1},
            (800, 600),
            (960, 720, 120, 24),
        ),
        ("bytedance/seedance-2.0", {"aspect_ratio": "adaptive", "duration": 12}, None, (1280, 720, 288, 24)),
        ("openai/sora-2", {}, None, (720, 1280, 96, 24)),  # portrait by default
        ("openai/sora-2", {"aspect_ratio": "landscape", "seconds": 12}, None, (1280, 720, 288, 24)),
        (
            "pixverse/pixverse-v5",
            {"quality": "1080p", "aspect_ratio": "1:1", "duration": 8},
            None,
            (1080, 1080, 192, 24),
        ),
        ("luma/ray-2-720p", {"aspect_ratio": "9:21", "duration": 9}, None, (720, 1680, 216, 24)),
        ("wan-video/wan-2.5-t2v", {"size": "1080*1920", "duration": 10}, None, (1080, 1920, 240, 24)),
        ("google/veo-3.1-lite", {"aspect_ratio": "9:16", "resolution": "1080p"}, None, (1080, 1920, 192, 24)),
    ],
)
def test_the_newer_models_output_rules(
    model: str, values: dict[str, Any], image: tuple[int, int] | None, expected: tuple[int, int, int, int]
) -> None:
    schema = by_model(model)
    assert schema is not None
    assert plan_output(model, schema.with_defaults(values), image) == OutputPlan(*expected)


def test_a_model_without_any_size_or_length_input_makes_5_s_at_16_9_720p() -> None:
    assert generic_plan({}, None) == OutputPlan(1280, 720, 120, 24)
    assert generic_plan({"duration": "6s", "resolution": "4K"}, (9, 16)) == OutputPlan(2160, 3840, 144, 24)
    assert generic_plan({"num_frames": 81, "fps": 16, "size": "832x480"}, None) == OutputPlan(
        832, 480, 81, 16
    )


@pytest.mark.parametrize(
    ("model", "values", "error"),
    [
        (
            "minimax/hailuo-2.3-fast",
            {"first_frame_image": LANDSCAPE_IMAGE, "resolution": "1080p", "duration": 10},
            "6-second",
        ),
        ("minimax/hailuo-02", {"duration": 10}, "6-second"),  # 1080p by default
        ("google/veo-3.1-lite", {"resolution": "1080p", "duration": 4}, "must be 8"),
        ("openai/sora-2", {"aspect_ratio": "landscape", "input_reference": PORTRAIT_IMAGE}, "aspect ratio"),
        (
            "bytedance/seedance-2.0",
            {"image": LANDSCAPE_IMAGE, "reference_images": [LANDSCAPE_IMAGE]},
            "cannot be combined",
        ),
        (
            "bytedance/seedance-2.0",
            {"reference_audios": ["https://example.com/a.mp3"]},
            "need an image or video",
        ),
        (
            "bytedance/seedance-1-lite",
            {"reference_images": [LANDSCAPE_IMAGE], "resolution": "1080p"},
            "1080p",
        ),
    ],
)
def test_inputs_a_newer_model_refuses_when_it_runs_fail_the_prediction(
    published: FakeReplicateServer, model: str, values: dict[str, Any], error: str
) -> None:
    client, transport = make_client(published)
    try:
        done = wait(client, client.models.predictions.create(model=model, input={"prompt": "x"} | values))
    finally:
        transport.close()
    assert done.status == "failed" and error in (done.error or ""), done.error


def test_the_command_refuses_a_bad_schemas_folder_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text(json.dumps({"model": "acme/x", "properties": {"a": []}}))
    done = subprocess.run(
        [sys.executable, "-m", "commands.cli", "fake-replicate", "--port", "0", "--schemas", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "--schemas: broken.json: `properties` must map each input to its schema" in done.stderr
