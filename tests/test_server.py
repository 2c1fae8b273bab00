"""`video-generator serve`: a real uvicorn server on a free port, and the flow run in another process
writing to the same store. Subscribers use httpx-sse, as an app would."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from prefect.client.orchestration import get_client

from clipgen import events
from clipgen.http_safety import RedactSecrets
from clipgen.server import create_app
from clipgen.settings import Settings
from clipgen.stores.base import VIDEO_BUCKET, ClipRecord
from clipgen.stores.local import LocalStore
from tests.conftest import REPO
from tests.stack.gateway import ServerThread

pytestmark = pytest.mark.usefixtures("prefect_server")
CLIPS = 4


@pytest.fixture
def server(data_dir: Path) -> Iterator[str]:
    with ServerThread(create_app(Settings(), poll_interval_s=0.1), lifespan="on") as thread:
        yield thread.base_url


def start_job(
    tmp_path: Path, data_dir: Path, clips: int = CLIPS, duration: float = 4.0, *flags: str
) -> tuple[str, subprocess.Popen[str]]:
    """The example's text-only clip, `clips` times, run by the CLI in its own process."""
    from prefect.settings import PREFECT_API_URL

    job_id = str(uuid4())
    prompts = [
        {"clip_index": i, "prompt": f"a lantern, take {i}", "duration": duration} for i in range(clips)
    ]
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"job_id": job_id, "clip_prompts": prompts}))
    env = {
        **os.environ,
        "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "commands.cli",
            "run",
            str(job),
            "--model",
            "veo-3.1",
            "--concurrency",
            "2",
            *flags,
        ],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return job_id, process


def unsigned(event: ServerSentEvent) -> tuple[str, str, dict[str, Any]]:
    """An event without its links' expiry and signature, which differ each time they are signed."""
    data = json.loads(event.data)
    for key in ("video_url", "thumbnail_url"):
        if key in data:
            data[key] = data[key].split("?")[0]
    return event.id, event.event, data


def wait_for_job(base: str, job_id: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{base}/jobs/{job_id}").status_code == 404:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)


def subscribe(base: str, job_id: str, **headers: str) -> list[ServerSentEvent]:
    with (
        httpx.Client(timeout=httpx.Timeout(60, read=60)) as client,
        connect_sse(client, "GET", f"{base}/jobs/{job_id}/events", headers=headers) as source,
    ):
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return list(source.iter_sse())  # ends when the server closes the stream after the final event


def test_a_live_subscriber_sees_the_whole_job_and_a_reconnect_resumes(
    server: str, tmp_path: Path, data_dir: Path
) -> None:
    job_id, process = start_job(tmp_path, data_dir)
    wait_for_job(server, job_id)
    live = subscribe(server, job_id)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output

    names = [e.event for e in live]
    ids = [int(e.id) for e in live]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    core = [n for n in names if n in (events.START, events.PROGRESS, events.COMPLETE)]
    assert core == [events.START] + [events.PROGRESS] * CLIPS + [events.COMPLETE]
    assert names.count(events.THUMBNAIL_READY) == CLIPS
    assert json.loads(live[-1].data)["successful_clips"] == CLIPS
    # Event data carries links a browser can open, signed now as in /jobs/{id}, never the store's paths.
    urls = [
        data[key]
        for e in live
        for data in [json.loads(e.data)]
        for key in ("video_url", "thumbnail_url")
        if key in data
    ]
    assert len(urls) == 2 * CLIPS
    for url in urls:
        assert url.startswith(server) and "sig=" in url and "file:" not in url
        assert httpx.get(url).status_code == 200

    # A reconnecting subscriber gets exactly what came after the id it last saw.
    resumed = subscribe(server, job_id, **{"Last-Event-ID": live[2].id})
    assert [e.id for e in resumed] == [e.id for e in live[3:]]
    # One that joins after the end gets the whole history, and the stream closes.
    late = subscribe(server, job_id)
    assert [unsigned(e) for e in late] == [unsigned(e) for e in live]  # links are signed anew
    # One that already saw the final event is told so at once: the stream closes empty.
    assert subscribe(server, job_id, **{"Last-Event-ID": live[-1].id}) == []
    # A browser reconnecting to the page's `?after=` URL resumes from its own Last-Event-ID.
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client, "GET", f"{server}/jobs/{job_id}/events?after=0", headers={"Last-Event-ID": live[-2].id}
        ) as source,
    ):
        assert [e.id for e in source.iter_sse()] == [live[-1].id]
    bad = httpx.get(f"{server}/jobs/{job_id}/events", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]


def test_status_json_has_counts_clips_and_working_links(server: str, tmp_path: Path, data_dir: Path) -> None:
    job_id, process = start_job(tmp_path, data_dir, clips=3)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    status = httpx.get(f"{server}/jobs/{job_id}").json()
    assert (status["state"], status["total_clips"], status["completed"], status["failed"]) == (
        "completed",
        3,
        3,
        0,
    )
    assert [c["clip_index"] for c in status["clips"]] == [0, 1, 2]
    for clip in status["clips"]:
        assert clip["status"] == "success" and clip["actual_duration"] >= 2.0
        video = httpx.get(clip["video_url"])
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        thumbnail = httpx.get(clip["thumbnail_url"])
        assert thumbnail.headers["content-type"] == "image/jpeg"
    forged = status["clips"][0]["video_url"].replace("sig=", "sig=0")
    assert httpx.get(forged).status_code == 403

    # The same run in the Prefect UI: a finished progress artifact and a table of the clips.
    keys = [f"video-clips-{job_id}", f"video-clips-{job_id}-table"]
    progress, table_artifact = (latest_artifact(key) for key in keys)
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    table = table_artifact["data"]
    rows: list[dict[str, Any]] = json.loads(table) if isinstance(table, str) else table
    assert [row["clip"] for row in rows] == [0, 1, 2]
    assert {row["status"] for row in rows} == {"success"}
    assert all(row["video"].startswith("file://") for row in rows)

    # And the progress as Prefect events, with the job as the resource (the UI's feed, automations).
    names = prefect_events(f"video-generator.job.{job_id}", want=5)
    assert names == ["video-generator.video_generation_start"] + [
        "video-generator.video_generation_progress"
    ] * 3 + ["video-generator.video_generation_complete"]


def prefect_events(resource_id: str, want: int, timeout_s: float = 30) -> list[str]:
    # Events reach the server asynchronously (a websocket): wait for them, within a bound.
    deadline = time.monotonic() + timeout_s
    query = {"filter": {"any_resource": {"id": [resource_id]}, "order": "ASC"}, "limit": 50}
    with get_client(sync_client=True) as client:
        while True:
            found = client._client.post("/events/filter", json=query).json()["events"]
            if len(found) >= want or time.monotonic() > deadline:
                return [event["event"] for event in found]
            time.sleep(0.3)


def latest_artifact(key: str) -> dict[str, Any]:
    # By key: Prefect 3.8.8's artifact filter endpoint misses artifacts that this route finds.
    with get_client(sync_client=True) as client:
        response = client._client.get(f"/artifacts/{key}/latest")
    response.raise_for_status()
    artifact: dict[str, Any] = response.json()
    return artifact


def test_unknown_job_is_404_json(server: str) -> None:
    for job_id in (uuid4(), "nope", "not-a-uuid-%20"):
        for path in ("", "/events", "/view"):
            response = httpx.get(f"{server}/jobs/{job_id}{path}")
            if path == "/view" and not isinstance(job_id, str):
                continue  # the page of a job that has not started yet is served, and waits for it
            assert response.status_code == 404, (job_id, path)
            assert "unknown job" in response.json()["error"]
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}


def test_every_route_requires_the_token_when_set(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEO_GENERATOR_API_TOKEN", "s3cret")
    with ServerThread(create_app(Settings()), lifespan="on") as thread:
        base = thread.base_url
        job = uuid4()
        for path in ("/healthz", f"/jobs/{job}", f"/jobs/{job}/events", f"/jobs/{job}/view"):
            assert httpx.get(base + path).status_code == 401
        assert httpx.get(base + "/healthz", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(base + "/healthz?token=s3cret").status_code == 200
        page = httpx.get(f"{base}/jobs/{job}/view?token=s3cret")
        assert page.status_code == 200 and '"token": "s3cret"' in page.text


def test_tokens_are_redacted_from_access_logs() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/jobs/x/events?after=3&token=s3cret", "1.1", 200),
        None,
    )
    RedactSecrets().filter(record)
    assert "s3cret" not in record.getMessage() and "token=***" in record.getMessage()


def store_of_its_own(settings: Settings) -> LocalStore:
    """A local store keeping its files somewhere else than the data directory's `storage/`."""
    return LocalStore(settings.data_dir / "a-store-of-its-own")


def test_media_is_read_through_the_store_wherever_it_keeps_its_files(data_dir: Path, tmp_path: Path) -> None:
    """`/media` asks the store for the object's file: the server does not rebuild the local layout."""
    settings = Settings(VIDEO_GENERATOR_STORE=f"{__name__}:store_of_its_own")
    job_id, clip = uuid4(), tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42 a clip")
    store = store_of_its_own(settings)
    stored = store.put_object(VIDEO_BUCKET, f"{job_id}/clip_0.mp4", clip, "video/mp4")
    store.upsert_clip(
        ClipRecord(job_id=job_id, clip_index=0, status="success", model="veo-3.1", video_path=stored.path)
    )
    store.append_event(job_id, events.START, {"total_clips": 1, "clip_indices": [0]})
    with ServerThread(create_app(settings), lifespan="on") as thread:
        link = httpx.get(f"{thread.base_url}/jobs/{job_id}").json()["clips"][0]["video_url"]
        assert link.startswith(f"{thread.base_url}/media/"), link
        video = httpx.get(link)
    assert video.status_code == 200 and video.content == clip.read_bytes()
