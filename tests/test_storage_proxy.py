"""The one-URL gateway in front of the real PostgREST and Storage: its fault controls and request record,
which other tests rely on, and that it passes requests and answers through intact (the PostgREST half
against an echo server here, to see exactly what arrives). And what Storage's cached build is keyed by."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from storage3.exceptions import StorageApiError
from storage3.types import FileOptions

from supabase import Client, ClientOptions, create_client
from tests.conftest import SupabaseStack
from tests.stack.gateway import ServerThread, SupabaseGateway, classify
from tests.stack.postgrest import jwt_key
from tests.stack.storage_server import MULTIPART_FIX, source_hash

SECRET = "test-jwt-secret-with-at-least-32-characters!"
BUCKET = "proxy-tests"
MP4: FileOptions = {"content-type": "video/mp4", "upsert": "true"}


@contextmanager
def supabase(base_url: str, key: str) -> Iterator[Client]:
    """The client as production builds it: its own httpx client, closed afterwards."""
    with httpx.Client(timeout=30) as http:
        yield create_client(base_url, key, ClientOptions(httpx_client=http))


@pytest.fixture
def service(supabase_env: SupabaseStack) -> Iterator[Client]:
    with supabase(supabase_env.url, supabase_env.service_key) as client:
        if BUCKET not in supabase_env.storage.buckets:
            client.storage.create_bucket(BUCKET, options={"public": False})
        yield client
    supabase_env.storage.clear_faults()


def api_error(call: Callable[[], object]) -> StorageApiError:
    with pytest.raises(StorageApiError) as raised:
        call()
    return raised.value


def test_fail_next_fails_matching_requests_before_storage_then_recovers(
    service: Client, supabase_env: SupabaseStack
) -> None:
    storage, files, path = supabase_env.storage, service.storage.from_(BUCKET), f"{os.urandom(4).hex()}/a.mp4"
    storage.fail_next(2, bucket=BUCKET)
    storage.fail_next(1, bucket="other-bucket", operation="any")  # never matches here
    for _ in range(2):
        error = api_error(lambda: files.upload(path, b"x", MP4))
        assert (error.status, error.code) == ("503", "ServiceUnavailable")
    assert (BUCKET, path) not in storage.objects  # the faults never reached Storage
    files.upload(path, b"x", MP4)
    assert storage.writes(BUCKET, path) == 1
    uploads = [(r.status, r.role) for r in storage.requests if r.path.endswith(path)]
    assert uploads == [(503, "service_role"), (503, "service_role"), (200, "service_role")]
    assert storage.pending_faults == 1
    storage.clear_faults()

    storage.fail_next(1, status=500, operation="sign")
    assert api_error(lambda: files.create_signed_url(path, 60)).status == "500"
    assert files.create_signed_url(path, 60)["signedURL"]


def test_a_reset_fault_drops_the_connection_and_a_delay_passes_the_request_on(
    service: Client, supabase_env: SupabaseStack
) -> None:
    storage, files, path = supabase_env.storage, service.storage.from_(BUCKET), f"{os.urandom(4).hex()}/a.mp4"
    storage.fail_next(1, bucket=BUCKET, reset=True)
    with pytest.raises(httpx.TransportError):
        files.upload(path, b"x" * 100_000, MP4)
    assert storage.requests[-1].status == 0 and (BUCKET, path) not in storage.objects
    storage.delay_next(1, 0.2, bucket=BUCKET, operation="upload")
    files.upload(path, b"x", MP4)
    assert storage.writes(BUCKET, path) == 1 and storage.pending_faults == 0


def test_keys_with_spaces_and_plus_signs_and_ranges_pass_through(service: Client) -> None:
    files, path = service.storage.from_(BUCKET), f"job {os.urandom(4).hex()}/clip (1)+2.mp4"
    data = os.urandom(300_000)
    files.upload(path, data, MP4)
    url = str(files.create_signed_url(path, 60)["signedURL"])
    assert httpx.get(url).content == data
    part = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert (part.status_code, part.headers["content-range"], part.content) == (
        206,
        f"bytes 10-19/{len(data)}",
        data[10:20],
    )
    assert files.download(path) == data
    # Storage takes keys of ASCII word characters and a few signs only (the old imitation took any).
    refused = api_error(lambda: files.upload("job/clip é.mp4", b"x", MP4))
    assert (refused.status, refused.code) == ("400", "InvalidKey")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "bucket", ("bucket", None)),
        ("GET", "bucket/b", ("bucket", "b")),
        ("POST", "object/b/job/clip.mp4", ("upload", "b")),
        ("PUT", "object/b/job/clip.mp4", ("upload", "b")),
        ("GET", "object/b/job/clip.mp4", ("download", "b")),
        ("GET", "object/authenticated/b/x", ("download", "b")),
        ("GET", "object/sign/b/x", ("download", "b")),
        ("POST", "object/sign/b/x", ("sign", "b")),
        ("POST", "object/sign/b", ("sign", "b")),
        ("GET", "object/info/b/x", ("info", "b")),
        ("POST", "object/list/b", ("list", "b")),
        ("DELETE", "object/b", ("remove", "b")),
        ("DELETE", "object/b/x", ("remove", "b")),
        ("GET", "status", ("any", None)),
    ],
)
def test_requests_are_classified_as_storage_routes_them(
    method: str, path: str, expected: tuple[str, str | None]
) -> None:
    assert classify(method, path) == expected


async def _echo(request: Request) -> Response:
    if request.url.path == "/empty":  # PostgREST's answer to a write with Prefer: return=minimal
        return Response(status_code=204, headers={"content-range": "*/*"})
    body = {
        "method": request.method,
        "path": request.url.path,
        "query": request.scope["query_string"].decode(),
        "headers": dict(request.headers),
        "body": (await request.body()).decode(),
    }
    headers = {"content-range": "0-0/*", "x-echo": "yes", "content-profile": "public"}
    return Response(json.dumps([body]), 201, headers=headers, media_type="application/json")


def test_rest_is_proxied_to_postgrest_with_everything_it_needs() -> None:
    key = jwt_key(SECRET, "service_role")
    echo = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST", "PATCH", "DELETE"])])
    with ServerThread(echo, name="echo") as upstream, SupabaseGateway(upstream.base_url, None) as gateway:
        headers = {
            "apikey": key,
            "Authorization": f"Bearer {key}",
            "Prefer": "return=representation,resolution=merge-duplicates",
            "Accept": "application/json",
            "Content-Profile": "public",
        }
        url = f"{gateway.base_url}/rest/v1/clips?on_conflict=job_id,clip_index&select=*&id=eq.1"
        answer = httpx.post(url, headers=headers, content=b'{"job_id": "j"}')
        assert answer.status_code == 201
        assert (answer.headers["x-echo"], answer.headers["content-range"]) == ("yes", "0-0/*")
        seen = answer.json()[0]
        assert (seen["method"], seen["path"]) == ("POST", "/clips")
        assert seen["query"] == "on_conflict=job_id,clip_index&select=*&id=eq.1"
        assert seen["body"] == '{"job_id": "j"}'
        for name, value in headers.items():
            assert seen["headers"][name.lower()] == value
        assert seen["headers"]["host"] == upstream.base_url.removeprefix("http://")

        # supabase-py itself, through the same URL: the query builder's request reaches PostgREST intact.
        with supabase(gateway.base_url, key) as client:
            result = client.table("clips").select("id,status").eq("job_id", "j").execute()
        echoed: Any = result.data[0]
        assert (echoed["method"], echoed["path"]) == ("GET", "/clips")
        assert echoed["query"] == "select=id%2Cstatus&job_id=eq.j"
        assert echoed["headers"]["authorization"] == f"Bearer {key}"

        empty = httpx.post(f"{gateway.base_url}/rest/v1/empty", headers=headers, content=b"{}")
        assert (empty.status_code, empty.content, empty.headers["content-range"]) == (204, b"", "*/*")
        assert "content-length" not in empty.headers
        head = httpx.head(f"{gateway.base_url}/rest/v1/clips?select=*", headers=headers)
        assert head.status_code == 201 and int(head.headers["content-length"]) > 0 and head.content == b""

        assert httpx.get(f"{gateway.base_url}/auth/v1/user").status_code == 404
        assert httpx.get(f"{gateway.base_url}/storage/v1/bucket").status_code == 503  # no Storage here
    with SupabaseGateway("http://127.0.0.1:9", None) as orphan:  # nothing listens on port 9
        assert httpx.get(f"{orphan.base_url}/rest/v1/clips").status_code == 502


def test_a_client_without_its_own_http_client_trips_a_deprecation_warning() -> None:
    """supabase 2.34 hands storage3 the deprecated `timeout=` and `verify=` unless ClientOptions has an
    httpx_client: under `filterwarnings = error` that fails a test, so build clients as `supabase()` does."""
    client = create_client("http://127.0.0.1:9", jwt_key(SECRET, "service_role"))
    with pytest.warns(DeprecationWarning) as caught:
        storage = client.storage
    storage.session.close()
    messages = sorted(str(warning.message).split("'")[1] for warning in caught)
    assert messages == ["timeout", "verify"]


def test_the_storage_build_is_keyed_by_every_file_of_its_source(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "src").mkdir(parents=True)
    (source / "package.json").write_text("{}")
    (source / "src" / "server.ts").write_text("one")
    first = source_hash(source)
    (source / "node_modules").mkdir()
    (source / "node_modules" / "dep.js").write_text("installed")
    assert source_hash(source) == first  # a checkout's own node_modules is not the source
    (source / "src" / "server.ts").write_text("two")
    second = source_hash(source)
    assert second != first
    (tmp_path / MULTIPART_FIX).write_text("a fix applied after npm ci")
    assert source_hash(source) not in (first, second)
