"""Any Replicate video model by its published schema, through real flow runs against the fake Replicate:
a model the catalog has never seen (served from a schema written here), the schema kept with the job so a
rerun plans with it, and a catalog model whose live schema drifted, refused before any create."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from clipgen.errors import ValidationError
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.media import matches_aspect
from clipgen.model_lookup import schema_object_path
from clipgen.stores.base import REFERENCE_BUCKET
from clipgen.stores.local import LocalStore
from staging.fake_replicate.server import FakeReplicateServer

pytestmark = pytest.mark.usefixtures("prefect_server", "replicate_env")

NEW_MODEL: dict[str, Any] = {
    "model": "acme/tiny-video",
    "version": None,
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "maxLength": 2000},
        "image": {"type": "string", "format": "uri", "nullable": True},
        "duration": {"type": "integer", "enum": [3, 6], "default": 3},
        "aspect_ratio": {"type": "string", "enum": ["16:9", "9:16", "1:1"], "default": "16:9"},
        "generate_audio": {"type": "boolean", "default": True},
        "seed": {"type": "integer", "nullable": True},
    },
}
KLING_26 = json.loads(
    (Path(__file__).parents[1] / "clipgen" / "model_schemas" / "kwaivgi__kling-v2.6.json").read_text()
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token="test-token", latency_s=0.05) as server:
        yield server


@pytest.fixture
def replicate_env(fake: FakeReplicateServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("REPLICATE_API_TOKEN", "test-token")
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    yield
    fake.restore_schemas()


def _job(count: int = 3, duration: float = 3.0) -> ClipPrompts:
    tag = uuid4()
    clips = [{"clip_index": i, "prompt": f"{tag} shot {i}", "duration": duration} for i in range(count)]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": clips})


def _run(job: ClipPrompts, options: GenerationOptions) -> Any:
    from flows.video_generator import generate_video_clips

    return generate_video_clips(job, options, provider="replicate", store="local", return_state=True)


def _store() -> LocalStore:
    from clipgen.settings import Settings

    return LocalStore(Settings().data_dir)


def _made_for(fake: FakeReplicateServer, job: ClipPrompts) -> list[dict[str, Any]]:
    tag = job.clip_prompts[0].prompt.split()[0]
    return [p for p in fake.predictions if tag in p["input"].get("prompt", "")]


def test_a_model_the_catalog_has_never_seen_runs_by_its_published_schema(fake: FakeReplicateServer) -> None:
    fake.add_schema(NEW_MODEL)
    job = _job()
    state = _run(job, GenerationOptions(model="acme/tiny-video", aspect_ratio="9:16"))

    result = state.result()
    assert state.is_completed() and result.successful_clips == 3
    made = _made_for(fake, job)
    assert len(made) == 3
    # By role: the duration the model offers at or above the target, the ratio, audio off.
    for prediction in made:
        assert prediction["input"]["duration"] == 3 and prediction["input"]["aspect_ratio"] == "9:16"
        assert prediction["input"]["generate_audio"] is False
    for clip in result.clips:  # probed from the delivered files
        assert clip.width and clip.height and matches_aspect(clip.width, clip.height, "9:16", 0.02)
        assert clip.actual_duration and clip.actual_duration >= 1.0
        assert clip.metadata["replicate_model"] == "acme/tiny-video"
    assert _store().has_object(REFERENCE_BUCKET, schema_object_path(job.job_id, "acme/tiny-video"))


def test_a_rerun_plans_with_the_schema_kept_with_the_job(fake: FakeReplicateServer) -> None:
    fake.add_schema(NEW_MODEL)
    job = _job()
    options = GenerationOptions(model="acme/tiny-video")
    assert _run(job, options).is_completed()
    paid = len(_made_for(fake, job))

    # The live schema now offers other durations: planned with it, the rerun would ask for 4 s clips and
    # pay for all three again. Planned with the kept schema, it reuses every clip.
    changed = copy.deepcopy(NEW_MODEL)
    changed["properties"]["duration"]["enum"] = [4, 8]
    fake.add_schema(changed)
    state = _run(job, options)
    assert state.is_completed() and state.result().successful_clips == 3
    assert len(_made_for(fake, job)) == paid


def test_a_model_replicate_does_not_know_is_refused_naming_the_option(fake: FakeReplicateServer) -> None:
    before = fake.creates
    with pytest.raises(ValidationError) as refused:
        _run(_job(), GenerationOptions(model="acme/no-such-model")).result()
    assert [problem.field for problem in refused.value.problems] == ["options.model"]
    assert "acme/no-such-model" in str(refused.value)
    assert fake.creates == before


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda p: p["properties"].pop("duration"), "input duration was removed"),
        (lambda p: p["properties"]["duration"].update(enum=[5]), "input duration no longer accepts 10"),
        (
            lambda p: (p["properties"].update(style={"type": "string"}), p["required"].append("style")),
            "input style is now required",
        ),
        (
            lambda p: p["properties"]["aspect_ratio"].update(enum=["16:9"]),
            'input aspect_ratio no longer accepts "9:16", "1:1"',
        ),
    ],
    ids=["removed", "narrowed", "new-required", "ratio-narrowed"],
)
def test_a_drifted_catalog_schema_is_refused_before_any_create(
    fake: FakeReplicateServer, change: Any, named: str
) -> None:
    drifted = copy.deepcopy(KLING_26)
    change(drifted)
    fake.add_schema(drifted)
    before = fake.creates
    job = _job()
    with pytest.raises(ValidationError) as refused:
        _run(job, GenerationOptions(model="kling-v2.6")).result()
    assert refused.value.problems[0].field == "options.model"
    assert named in str(refused.value)
    assert fake.creates == before and not _made_for(fake, job)


def _run_log(state: Any) -> str:
    """The flow run's log as the Prefect API has it (what the UI shows), once this process has sent it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    return "\n".join(log.message for log in logs)


def test_a_harmless_change_is_logged_and_the_run_goes_on(fake: FakeReplicateServer) -> None:
    changed = copy.deepcopy(KLING_26)
    changed["properties"]["camera_motion"] = {"type": "string", "default": "none"}
    changed["properties"]["duration"]["enum"] = [5, 10, 15]
    fake.add_schema(changed)
    job = _job(duration=5.0)
    state = _run(job, GenerationOptions(model="kling-v2.6"))
    assert state.is_completed() and state.result().successful_clips == 3
    logged = _run_log(state)
    assert "kling-v2.6: its published input schema changed harmlessly" in logged
    assert "new input camera_motion" in logged


def test_drift_is_not_checked_when_the_schema_cannot_be_read_and_the_run_goes_on(
    fake: FakeReplicateServer,
) -> None:
    """A models endpoint that fails (here 503 for every read) does not stop the job: its creates meet the
    same API, and one the model would refuse makes nothing. The run's log says drift was not checked."""
    from staging.fake_replicate.server import Fault

    fake.add_fault(Fault(kind="model_error", status=503, match="kling-v2.6", times=-1))
    try:
        state = _run(_job(duration=5.0), GenerationOptions(model="kling-v2.6"))
    finally:
        fake.clear_faults()
    assert state.is_completed() and state.result().successful_clips == 3
    assert "drift is not checked this run" in _run_log(state)
