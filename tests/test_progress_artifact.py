"""The job's progress artifact is updated at most once a second and once at the end, not after every clip
(issue 19): a real flow run, its Prefect API requests read at a recording proxy in front of the server."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from clipgen.backends import register_provider
from clipgen.job import ClipPrompts, GenerationOptions
from flows.progress_artifact import UPDATE_INTERVAL_S
from flows.video_generator import generate_video_clips
from tests.api_recorder import RecordingProxy
from tests.doubles import ScriptedProvider

pytestmark = pytest.mark.usefixtures("prefect_server")

CLIPS = 30


def _job(clips: int) -> ClipPrompts:
    prompts = [{"clip_index": i, "prompt": f"clip {i}", "duration": 1.0} for i in range(clips)]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts})


def _artifact(artifact_id: str) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        response = client._client.get(f"/artifacts/{artifact_id}")
    response.raise_for_status()
    artifact: dict[str, Any] = response.json()
    return artifact


def test_progress_artifact_is_updated_at_most_once_a_second_and_at_the_end() -> None:
    job = _job(CLIPS)
    register_provider("scripted", lambda settings: ScriptedProvider())
    # Prefect's events worker, if this is the process's first event, opens its websocket to the server
    # itself: the proxy only passes HTTP.
    emit_event(event="tests.progress-artifact.start", resource={"prefect.resource.id": "tests.progress"})
    with (
        RecordingProxy(str(PREFECT_API_URL.value())) as proxy,
        temporary_settings({PREFECT_API_URL: proxy.api_url}),
    ):
        state = generate_video_clips(
            job, GenerationOptions(model="veo-3.1"), provider="scripted", store="local", return_state=True
        )
        APILogWorker.drain_all(timeout=5)  # the run's last logs, while the proxy is there to pass them on
    assert state.is_completed(), state.message

    updates = [r for r in proxy.requests if r.method == "PATCH" and r.path.startswith("/api/artifacts/")]
    assert updates and all(r.status == 204 for r in updates)
    updated = {r.path.removeprefix("/api/artifacts/") for r in updates}
    assert len(updated) == 1, updated
    artifact = _artifact(updated.pop())
    assert artifact["key"] == f"video-clips-{job.job_id}" and artifact["type"] == "progress"
    assert artifact["data"] == 100.0 and artifact["description"] == f"{CLIPS}/{CLIPS} clips"
    # Every update but the last waits a second after the one before; the last is sent when the clips end
    # (+1: arrivals at the proxy jitter). Updated per clip, it was 30 updates within a few seconds.
    span_s = updates[-1].arrived - updates[0].arrived
    assert len(updates) <= 2 + span_s / UPDATE_INTERVAL_S + 1, [round(r.arrived, 2) for r in updates]
