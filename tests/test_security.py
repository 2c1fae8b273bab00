"""`video-generator serve` under attack (issue 15): one test per hole found, each against a real server, a
`serve` process of its own where its logs or its startup are what is shown. Jobs are written through the
real local store (files + SQLite), as the flow writes them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest
from httpx_sse import connect_sse

from clipgen import events
from clipgen.backends import close_quietly, open_store
from clipgen.link_key import KEY_FILE
from clipgen.server import create_app
from clipgen.settings import Settings
from clipgen.stores.base import THUMBNAIL_BUCKET, VIDEO_BUCKET, ClipRecord, ThumbnailRecord
from tests.cli_process import clean_env, command
from tests.conftest import REPO
from tests.stack.gateway import ServerThread

TOKEN = "s3cret-api-token"


def seed_job(data_dir: Path, tmp_path: Path, *, finished: bool = True) -> UUID:
    """A job of one successful clip with its thumbnail, its events holding file:// URLs as the flow's do."""
    job_id = uuid4()
    video, thumbnail = tmp_path / "clip.mp4", tmp_path / "thumb.jpg"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 a clip")
    thumbnail.write_bytes(b"\xff\xd8\xff a thumbnail")
    store = open_store("local", Settings())
    try:
        clip = store.put_object(VIDEO_BUCKET, f"{job_id}/clip_0.mp4", video, "video/mp4")
        thumb = store.put_object(THUMBNAIL_BUCKET, f"{job_id}/clip_0.jpg", thumbnail, "image/jpeg")
        store.upsert_clip(
            ClipRecord(job_id=job_id, clip_index=0, status="success", model="veo-3.1", video_path=clip.path)
        )
        store.upsert_thumbnail(
            ThumbnailRecord(job_id=job_id, clip_index=0, thumbnail_path=thumb.path, thumbnail_url=thumb.url)
        )
        store.append_event(job_id, events.START, {"total_clips": 1, "clip_indices": [0]})
        progress = {"clip_index": 0, "completed": 1, "failed": 0, "video_url": clip.url}
        store.append_event(job_id, events.PROGRESS, progress)
        store.append_event(job_id, events.THUMBNAIL_READY, events.thumbnail_ready(0, thumb.url))
        if finished:
            store.append_event(job_id, events.COMPLETE, {"successful_clips": 1})
    finally:
        close_quietly(store)
    return job_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    base_url: str
    process: subprocess.Popen[str]
    output: str = ""


@contextlib.contextmanager
def serve_process(
    tmp_path: Path, data_dir: Path, *flags: str, host: str = "127.0.0.1", env: dict[str, str] | None = None
) -> Iterator[Served]:
    """`video-generator serve` as deployed, its output (uvicorn's access log included) kept when it stops."""
    port = free_port()
    process = subprocess.Popen(
        command("serve", "--host", host, "--port", str(port), *flags),
        cwd=REPO,
        env=clean_env(tmp_path / "home", data_dir, env),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    served = Served(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 60
        while not _answers(served.base_url):
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            served.output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:  # a stream still open keeps a graceful shutdown waiting
            process.kill()
            served.output, _ = process.communicate()


def _answers(base_url: str) -> bool:
    try:
        httpx.get(f"{base_url}/healthz", timeout=1)
    except httpx.TransportError:
        return False
    return True


# 2. The token is accepted in any spelling Starlette decodes; each is redacted from the access log.
def test_item2_the_api_token_is_redacted_in_every_spelling_the_server_accepts(
    tmp_path: Path, data_dir: Path
) -> None:
    with serve_process(tmp_path, data_dir, env={"VIDEO_GENERATOR_API_TOKEN": TOKEN}) as served:
        for key in ("token", "%74oken", "tok%65n", "%74%6F%6B%65%6E"):
            response = httpx.get(f"{served.base_url}/healthz?after=1&{key}={TOKEN}")
            assert response.status_code == 200, key  # the server accepts this spelling as the token
        assert httpx.get(f"{served.base_url}/healthz?TOKEN=other").status_code == 401  # keys are exact
    assert "/healthz?after=1&%74oken=***" in served.output, served.output
    assert TOKEN not in served.output


# 3. The signature of a media link is its credential: it is not logged either.
def test_item3_media_link_signatures_are_redacted_from_the_access_log(tmp_path: Path, data_dir: Path) -> None:
    job_id = seed_job(data_dir, tmp_path)
    with serve_process(tmp_path, data_dir) as served:
        link = httpx.get(f"{served.base_url}/jobs/{job_id}").json()["clips"][0]["video_url"]
        sig = re.search(r"sig=([0-9a-f]+)", link)
        assert sig, link
        assert httpx.get(link).status_code == 200
        assert httpx.get(link.replace("sig=", "%73ig=")).status_code == 200  # a spelling it also decodes
    assert "sig=***" in served.output and "%73ig=***" in served.output, served.output
    assert sig.group(1) not in served.output


# 4. No token means no auth only on purpose.
def test_item4_serving_without_a_token_takes_an_explicit_choice(tmp_path: Path, data_dir: Path) -> None:
    env = clean_env(tmp_path / "home", data_dir, {"VIDEO_GENERATOR_API_TOKEN": ""})
    empty = subprocess.run(
        command("serve", "--port", str(free_port())),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # refused at once; before, it served with no auth
    )
    assert empty.returncode == 2 and "VIDEO_GENERATOR_API_TOKEN" in empty.stderr, empty.stderr
    env = clean_env(tmp_path / "home", data_dir)
    exposed = subprocess.run(
        command("serve", "--host", "0.0.0.0", "--port", str(free_port())),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exposed.returncode == 2, exposed.stderr
    assert "VIDEO_GENERATOR_API_TOKEN" in exposed.stderr and "--insecure-no-token" in exposed.stderr
    with serve_process(tmp_path, data_dir, "--insecure-no-token", host="0.0.0.0") as served:
        assert httpx.get(f"{served.base_url}/healthz").json() == {"status": "ok"}
    assert "warning: serving on 0.0.0.0 without VIDEO_GENERATOR_API_TOKEN" in served.output
    with pytest.raises(ValueError, match="VIDEO_GENERATOR_API_TOKEN"):  # the app refuses it too
        create_app(Settings(VIDEO_GENERATOR_API_TOKEN=""))


# 5. Every bad request is a 4xx JSON error: no 500, no traceback in the log.
def test_item5_bad_requests_get_4xx_json_and_no_traceback(tmp_path: Path, data_dir: Path) -> None:
    running = seed_job(data_dir, tmp_path, finished=False)
    huge = str(10**30)
    with serve_process(tmp_path, data_dir) as served:
        base = served.base_url
        link = httpx.get(f"{base}/jobs/{running}").json()["clips"][0]["video_url"]
        expires = re.search(r"expires=(\d+)", link)
        assert expires
        media = link.split("?")[0]
        requests = [
            (f"{media}?expires={expires.group(1)}&sig=\u00e9\u00e9", {}),  # non-ASCII: compare_digest raised
            (f"{media}?expires={huge}&sig=00", {}),
            (f"{media}?expires=-5&sig=00", {}),
            (f"{media}?expires=soon&sig=00", {}),
            (f"{base}/media/{VIDEO_BUCKET}/%00?expires=1&sig=00", {}),
            (f"{base}/jobs/{running}/events", {"Last-Event-ID": huge}),  # OverflowError from SQLite
            (f"{base}/jobs/{running}/events", {"Last-Event-ID": "-1"}),
            (f"{base}/jobs/{running}/events?after={huge}", {}),
            (f"{base}/jobs/{running}/events?after=-3", {}),
            (f"{base}/jobs/{running}/events?after=x", {}),
        ]
        for url, headers in requests:
            response = httpx.get(url, headers=headers, timeout=10)
            assert 400 <= response.status_code < 500, (url, headers, response.status_code)
            assert response.headers["content-type"] == "application/json", (url, headers)
            assert "error" in response.json(), (url, headers)
    assert "Traceback" not in served.output and " 500" not in served.output, served.output


# 6. Sound headers on the page and the JSON routes; the page's CSP allows its own script by nonce only.
def test_item6_pages_and_json_send_security_headers(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEO_GENERATOR_API_TOKEN", TOKEN)
    with ServerThread(create_app(Settings()), lifespan="on") as server:
        job = uuid4()
        page = httpx.get(f"{server.base_url}/jobs/{job}/view?token={TOKEN}")
        status = httpx.get(f"{server.base_url}/jobs/{job}", headers={"Authorization": f"Bearer {TOKEN}"})
        refused = httpx.get(f"{server.base_url}/healthz")
        hidden = [httpx.get(f"{server.base_url}{path}") for path in ("/docs", "/redoc", "/openapi.json")]
    assert [response.status_code for response in hidden] == [404, 404, 404]  # no unauthenticated schema
    assert all(response.json() == {"error": "Not Found"} for response in hidden)
    assert page.status_code == 200 and status.status_code == 404 and refused.status_code == 401
    for response in (page, status, refused):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    csp = dict(
        (part.split()[0], part.split()[1:]) for part in page.headers["content-security-policy"].split("; ")
    )
    nonce = re.search(r"<script nonce=\"([^\"]+)\">", page.text)
    assert nonce and csp["script-src"] == [f"'nonce-{nonce.group(1)}'"]  # no 'unsafe-inline'
    assert csp["default-src"] == ["'none'"] and csp["connect-src"] == ["'self'"]
    assert f'<style nonce="{nonce.group(1)}">' in page.text
    assert status.headers["content-security-policy"].startswith("default-src 'none'")


# 7. Links use the configured public URL; a forged Host header never makes a link to the forger's host.
def test_item7_links_never_follow_a_forged_host_header(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = seed_job(data_dir, tmp_path)
    with ServerThread(create_app(Settings()), lifespan="on") as server:
        forged = httpx.get(f"{server.base_url}/jobs/{job_id}", headers={"Host": "evil.example"}).json()
        local = httpx.get(f"{server.base_url}/jobs/{job_id}").json()
    links = [forged["clips"][0]["video_url"], forged["clips"][0]["thumbnail_url"]]
    assert all(link.startswith("/media/") and "evil.example" not in link for link in links), links
    assert local["clips"][0]["video_url"].startswith(f"{server.base_url}/media/")  # loopback both ends

    monkeypatch.setenv("VIDEO_GENERATOR_PUBLIC_URL", "https://clips.example/")
    with ServerThread(create_app(Settings()), lifespan="on") as server:
        public = httpx.get(f"{server.base_url}/jobs/{job_id}", headers={"Host": "evil.example"}).json()
        link = public["clips"][0]["video_url"]
        assert link.startswith(f"https://clips.example/media/{VIDEO_BUCKET}/{job_id}/clip_0.mp4?expires=")
        assert httpx.get(server.base_url + link.removeprefix("https://clips.example")).status_code == 200


# 8. The local store's signing key persists with its data, private, shared by every server of the store.
def test_item8_links_survive_a_restart_and_work_on_every_replica(tmp_path: Path, data_dir: Path) -> None:
    job_id = seed_job(data_dir, tmp_path)
    path = f"/jobs/{job_id}"
    with serve_process(tmp_path, data_dir) as one, serve_process(tmp_path, data_dir) as two:
        from_one = httpx.get(one.base_url + path).json()["clips"][0]["video_url"]
        from_two = httpx.get(two.base_url + path).json()["clips"][0]["video_url"]
        assert httpx.get(from_one.replace(one.base_url, two.base_url)).status_code == 200
        assert httpx.get(from_two.replace(two.base_url, one.base_url)).status_code == 200
    key = data_dir / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert [p.name for p in data_dir.iterdir() if KEY_FILE in p.name] == [KEY_FILE]  # no temporary left
    with serve_process(tmp_path, data_dir) as restarted:
        assert httpx.get(from_one.replace(one.base_url, restarted.base_url)).status_code == 200
    key.unlink()  # rotation, as docs/watching.md says
    with serve_process(tmp_path, data_dir) as rotated:
        assert httpx.get(from_one.replace(one.base_url, rotated.base_url)).status_code == 403


# 9. /media serves regular files inside the store, never through a symlink.
def test_item9_media_does_not_follow_symlinks(tmp_path: Path, data_dir: Path) -> None:
    job_id = seed_job(data_dir, tmp_path)
    secret = tmp_path / "private.txt"
    secret.write_text("not for the web")
    bucket = data_dir / "storage" / VIDEO_BUCKET
    (bucket / str(job_id) / "clip_1.mp4").symlink_to(secret)  # a file link out of the store
    (bucket / "outside").symlink_to(tmp_path, target_is_directory=True)  # a folder link out of it
    (bucket / str(job_id) / "clip_2.mp4").symlink_to(bucket / str(job_id) / "clip_0.mp4")  # even inside
    store = open_store("local", Settings())
    try:
        links = [f"{job_id}/clip_1.mp4", "outside/private.txt", f"{job_id}/clip_2.mp4"]
        for index, object_path in enumerate(links, start=1):
            record = ClipRecord(
                job_id=job_id, clip_index=index, status="success", model="veo-3.1", video_path=object_path
            )
            store.upsert_clip(record)
    finally:
        close_quietly(store)
    with ServerThread(create_app(Settings()), lifespan="on") as server:
        clips = httpx.get(f"{server.base_url}/jobs/{job_id}").json()["clips"]
        assert httpx.get(clips[0]["video_url"]).status_code == 200  # the regular file
        for clip in clips[1:]:
            response = httpx.get(clip["video_url"])  # signed by the server itself: only the path is wrong
            assert response.status_code == 404 and response.json() == {"error": "no such object"}, clip
            assert "not for the web" not in response.text


# 12. Event data carries the same signed links as /jobs/{id}, never the store's paths.
def test_item12_events_never_carry_server_paths(tmp_path: Path, data_dir: Path) -> None:
    job_id = seed_job(data_dir, tmp_path)
    with (
        ServerThread(create_app(Settings()), lifespan="on") as server,
        httpx.Client(timeout=30) as client,
        connect_sse(client, "GET", f"{server.base_url}/jobs/{job_id}/events") as source,
    ):
        data = [event.data for event in source.iter_sse()]
        assert len(data) == 4
        for item in data:
            assert "file:" not in item and str(data_dir.resolve()) not in item and os.sep + "tmp" not in item
        parsed = [json.loads(item) for item in data]
        links = [d[key] for d in parsed for key in ("video_url", "thumbnail_url") if key in d]
        assert len(links) == 2 and all(client.get(link).status_code == 200 for link in links)
