"""The fake Supabase Storage API and the one-URL gateway, driven by the real supabase-py client over real
sockets: Storage's routes, bodies and error shapes as storage3 2.34 sends and parses them, the auth rules of
private buckets without policies, faults, and the PostgREST proxy (against an echo server here; the real
PostgREST is tested elsewhere)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from storage3.exceptions import StorageApiError
from storage3.types import CreateOrUpdateBucketOptions, FileOptions

from supabase import Client, ClientOptions, create_client
from tests.stack.gateway import ServerThread, SupabaseGateway
from tests.stack.storage import FakeStorage, make_key

SECRET = "test-jwt-secret-with-at-least-32-characters!"
SERVICE_KEY = make_key(SECRET, "service_role")
ANON_KEY = make_key(SECRET, "anon")
BUCKET = "video-clips"
MP4: FileOptions = {"content-type": "video/mp4"}
UPSERT_MP4: FileOptions = {"content-type": "video/mp4", "upsert": "true"}
DUPLICATE = ("409", "Duplicate", "The resource already exists")
RLS = ("403", "Unauthorized", "new row violates row-level security policy")


# --- fixtures and helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway() -> Iterator[SupabaseGateway]:
    with SupabaseGateway(None, SECRET) as running:
        yield running


@pytest.fixture
def fake(gateway: SupabaseGateway) -> FakeStorage:
    gateway.storage.reset()
    return gateway.storage


@contextmanager
def supabase(base_url: str, key: str) -> Iterator[Client]:
    """The client as production builds it: its own httpx client, closed afterwards."""
    http = httpx.Client(timeout=30)
    try:
        yield create_client(base_url, key, ClientOptions(httpx_client=http))
    finally:
        http.close()


@pytest.fixture
def service(gateway: SupabaseGateway, fake: FakeStorage) -> Iterator[Client]:
    with supabase(gateway.base_url, SERVICE_KEY) as client:
        yield client


@pytest.fixture
def anon(gateway: SupabaseGateway, fake: FakeStorage) -> Iterator[Client]:
    with supabase(gateway.base_url, ANON_KEY) as client:
        yield client


def api_error(call: Callable[[], object]) -> StorageApiError:
    with pytest.raises(StorageApiError) as raised:
        call()
    return raised.value


def shape(error: StorageApiError) -> tuple[object, str, str]:
    """What storage3 parsed: the body's statusCode (a str), its `error`, its message."""
    return error.status, error.code, error.message


def clip(service: Client, data: bytes = b"\x00\x00\x00\x18ftypmp42", path: str = "job/clip_0.mp4") -> str:
    service.storage.create_bucket(BUCKET, options={"public": False})
    service.storage.from_(BUCKET).upload(path, data, UPSERT_MP4)
    return path


# --- buckets ---------------------------------------------------------------------------------------------


def test_buckets_are_created_private_and_answer_like_storage(service: Client, fake: FakeStorage) -> None:
    assert service.storage.create_bucket(BUCKET, options={"public": False}) == {"name": BUCKET}
    bucket = service.storage.get_bucket(BUCKET)
    assert (bucket.id, bucket.name, bucket.public, bucket.type) == (BUCKET, BUCKET, False, "STANDARD")
    assert bucket.created_at is not None and bucket.file_size_limit is None
    assert [b.id for b in service.storage.list_buckets()] == [BUCKET]
    assert fake.buckets[BUCKET]["public"] is False

    duplicate = api_error(lambda: service.storage.create_bucket(BUCKET))
    assert shape(duplicate) == DUPLICATE
    missing = api_error(lambda: service.storage.get_bucket("nope"))
    assert shape(missing) == ("404", "Bucket not found", "Bucket not found")

    limits: CreateOrUpdateBucketOptions = {
        "public": False,
        "file_size_limit": 10,
        "allowed_mime_types": ["video/*"],
    }
    service.storage.update_bucket(BUCKET, limits)
    assert fake.buckets[BUCKET].file_size_limit == 10
    assert fake.buckets[BUCKET].allowed_mime_types == ["video/*"]
    files = service.storage.from_(BUCKET)
    too_big = api_error(lambda: files.upload("big.mp4", b"x" * 11, MP4))
    assert (too_big.status, too_big.code) == ("413", "Payload too large")
    not_video = api_error(lambda: files.upload("a.jpg", b"x", {"content-type": "image/jpeg"}))
    assert (not_video.status, not_video.message) == ("415", "mime type image/jpeg is not supported")

    files.upload("ok.mp4", b"x", MP4)
    not_empty = api_error(lambda: service.storage.delete_bucket(BUCKET))
    assert not_empty.status == "409"
    service.storage.empty_bucket(BUCKET)
    assert service.storage.delete_bucket(BUCKET) == {"message": "Successfully deleted"}
    assert fake.buckets == {}


def test_errors_are_http_400_with_the_status_in_the_body(gateway: SupabaseGateway, fake: FakeStorage) -> None:
    """What Storage's error handler does (userStatusCode), which storage3 relies on: it reads the body."""
    headers = {"Authorization": f"Bearer {SERVICE_KEY}", "apikey": SERVICE_KEY}
    answer = httpx.get(f"{gateway.base_url}/storage/v1/bucket/nope", headers=headers)
    assert answer.status_code == 400
    assert answer.json() == {
        "statusCode": "404",
        "code": "NoSuchBucket",
        "error": "Bucket not found",
        "message": "Bucket not found",
    }


# --- uploads ---------------------------------------------------------------------------------------------


def test_upload_records_the_part_content_type_and_honours_upsert(service: Client, fake: FakeStorage) -> None:
    service.storage.create_bucket(BUCKET, options={"public": False})
    files = service.storage.from_(BUCKET)

    uploaded = files.upload("job/clip_0.mp4", b"first", UPSERT_MP4)
    assert (uploaded.path, uploaded.full_path) == ("job/clip_0.mp4", f"{BUCKET}/job/clip_0.mp4")
    stored = fake.object(BUCKET, "job/clip_0.mp4")
    assert (stored.content_type, stored.size, stored.upsert, stored.writes) == ("video/mp4", 5, True, 1)
    assert stored.sha256 == hashlib.sha256(b"first").hexdigest()
    assert stored.cache_control == "max-age=3600"  # storage3's default cacheControl form field

    duplicate = api_error(lambda: files.upload("job/clip_0.mp4", b"second", MP4))
    assert shape(duplicate) == DUPLICATE
    assert fake.read(BUCKET, "job/clip_0.mp4") == b"first"

    files.upload("job/clip_0.mp4", b"second", UPSERT_MP4)
    assert fake.writes(BUCKET, "job/clip_0.mp4") == 2
    assert list(fake.objects) == [(BUCKET, "job/clip_0.mp4")]
    assert fake.object(BUCKET, "job/clip_0.mp4").id == stored.id  # overwritten in place
    assert fake.read(BUCKET, "job/clip_0.mp4") == b"second"

    # update() is a PUT, which always overwrites.
    files.update("job/clip_0.mp4", b"third", {"content-type": "video/mp4"})
    assert fake.writes(BUCKET, "job/clip_0.mp4") == 3

    # The trap: without a content-type, storage3 labels every file text/plain.
    files.upload("job/untyped.mp4", b"\x00")
    assert fake.object(BUCKET, "job/untyped.mp4").content_type == "text/plain;charset=UTF-8"


def test_a_boolean_upsert_fails_in_storage3_before_any_request(service: Client, fake: FakeStorage) -> None:
    """storage3 2.34 puts the option's value into a header as is; httpx cannot encode a bool."""
    service.storage.create_bucket(BUCKET)
    sent = len(fake.requests)
    with pytest.raises(AttributeError, match="'bool' object has no attribute 'encode'"):
        boolean: dict[str, Any] = {"content-type": "video/mp4", "upsert": True}
        service.storage.from_(BUCKET).upload("a.mp4", b"x", cast(FileOptions, boolean))
    assert len(fake.requests) == sent and fake.objects == {}


def test_a_large_upload_streams_to_disk(service: Client, fake: FakeStorage, tmp_path: Path) -> None:
    source = tmp_path / "big.mp4"
    block = os.urandom(1024 * 1024)
    with source.open("wb") as out:
        for index in range(50):
            out.write(bytes([index]) + block[1:])
    service.storage.create_bucket(BUCKET)
    service.storage.from_(BUCKET).upload("big.mp4", source, UPSERT_MP4)

    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    stored = fake.object(BUCKET, "big.mp4")
    assert (stored.size, stored.sha256) == (50 * 1024 * 1024, expected)
    assert fake.largest_in_memory_body < 1024 * 1024  # spooled to disk, never held whole
    downloaded = service.storage.from_(BUCKET).download("big.mp4")
    assert hashlib.sha256(downloaded).hexdigest() == expected


# --- signed URLs and downloads ---------------------------------------------------------------------------


def test_signed_urls_are_absolute_and_download_without_a_key(
    service: Client, fake: FakeStorage, gateway: SupabaseGateway
) -> None:
    path = clip(service, b"video bytes")
    signed = service.storage.from_(BUCKET).create_signed_url(path, 60)
    url = signed["signedURL"]
    assert url is not None and url == signed["signedUrl"]
    assert url.startswith(f"{gateway.base_url}/storage/v1/object/sign/{BUCKET}/{path}?token=")

    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"video bytes"
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["cache-control"] == "max-age=3600"
    assert httpx.head(url).headers["content-length"] == str(len(b"video bytes"))
    attachment = httpx.get(url + "&download=clip.mp4")
    assert attachment.headers["content-disposition"] == "attachment; filename=clip.mp4"
    assert fake.requests[-1].operation == "download" and fake.requests[-1].role is None

    tampered = httpx.get(url[:-4] + ("AAAA" if not url.endswith("AAAA") else "BBBB"))
    assert tampered.status_code == 400
    assert tampered.json() == {
        "statusCode": "400",
        "code": "InvalidJWT",
        "error": "InvalidJWT",
        "message": "signature verification failed",
    }
    # A token signs one object: it does not open another.
    service.storage.from_(BUCKET).upload("job/other.mp4", b"other", MP4)
    other = httpx.get(url.replace(f"/{path}?", "/job/other.mp4?"))
    assert (other.status_code, other.json()["code"]) == (400, "InvalidSignature")

    missing = api_error(lambda: service.storage.from_(BUCKET).create_signed_url("job/none.mp4", 60))
    assert shape(missing) == ("404", "not_found", "Object not found")
    many = service.storage.from_(BUCKET).create_signed_urls([path, "job/none.mp4"], 60)
    assert many[0]["error"] is None and httpx.get(str(many[0]["signedURL"])).content == b"video bytes"
    assert many[1]["signedURL"] is None and many[1]["error"] is not None


def test_keys_with_spaces_and_unicode_round_trip(service: Client, fake: FakeStorage) -> None:
    path = clip(service, b"odd", path="job 1/clip é+ü.mp4")
    assert list(fake.objects) == [(BUCKET, path)]
    url = str(service.storage.from_(BUCKET).create_signed_url(path, 60)["signedURL"])
    assert httpx.get(url).content == b"odd"
    assert service.storage.from_(BUCKET).download(path) == b"odd"
    assert [e["name"] for e in service.storage.from_(BUCKET).list("job 1")] == ["clip é+ü.mp4"]


def test_an_expired_signed_url_is_refused(service: Client, fake: FakeStorage) -> None:
    path = clip(service)
    url = str(service.storage.from_(BUCKET).create_signed_url(path, 1)["signedURL"])
    time.sleep(2.1)
    answer = httpx.get(url)
    assert answer.status_code == 400
    body = answer.json()
    assert (body["statusCode"], body["error"]) == ("400", "InvalidJWT")
    assert body["message"] == '"exp" claim timestamp check failed'


def test_authenticated_download_info_and_exists(service: Client, fake: FakeStorage) -> None:
    path = clip(service, b"abc")
    files = service.storage.from_(BUCKET)
    assert files.download(path) == b"abc"
    assert files.info(path)["content_type"] == "video/mp4"
    assert files.exists(path) is True
    assert files.exists("job/none.mp4") is False  # storage3 needs 404 + "not_found" for this
    missing = api_error(lambda: files.download("job/none.mp4"))
    assert (missing.status, missing.code) == ("404", "not_found")


# --- keys and roles --------------------------------------------------------------------------------------


def test_the_anon_key_gets_nothing_private(service: Client, anon: Client, fake: FakeStorage) -> None:
    path = clip(service)
    files = anon.storage.from_(BUCKET)

    assert shape(api_error(lambda: anon.storage.create_bucket("mine"))) == RLS
    assert shape(api_error(lambda: files.upload("job/evil.mp4", b"x", MP4))) == RLS
    assert anon.storage.list_buckets() == []  # RLS hides rows rather than refusing the query
    assert api_error(lambda: anon.storage.get_bucket(BUCKET)).status == "404"
    for denied in (lambda: files.create_signed_url(path, 60), lambda: files.download(path)):
        error = api_error(denied)
        assert (error.status, error.code) == ("404", "not_found")
    assert files.list("job") == [] and files.remove([path]) == []

    assert list(fake.objects) == [(BUCKET, path)] and "mine" not in fake.buckets
    assert {r.role for r in fake.requests if r.role != "service_role"} == {"anon"}


def test_bad_keys_are_refused_like_storage_refuses_them(gateway: SupabaseGateway, fake: FakeStorage) -> None:
    wrong = make_key("another-secret-that-is-also-32-characters", "service_role")
    expired = make_key(SECRET, "service_role", ttl_s=-10)
    cases = {
        wrong: "signature verification failed",
        expired: '"exp" claim timestamp check failed',
        "not-a-jwt": "Invalid Compact JWS",
    }
    for key, message in cases.items():
        with supabase(gateway.base_url, key) as client:
            error = api_error(client.storage.list_buckets)
        assert shape(error) == ("403", "Unauthorized", message)
    # No Authorization header: the apikey header is used, as the gateway does.
    answer = httpx.get(f"{gateway.base_url}/storage/v1/bucket", headers={"apikey": SERVICE_KEY})
    assert answer.status_code == 200
    assert httpx.get(f"{gateway.base_url}/storage/v1/bucket").json()["message"] == "Invalid Compact JWS"


# --- faults ----------------------------------------------------------------------------------------------


def test_fail_next_fails_matching_uploads_then_recovers(service: Client, fake: FakeStorage) -> None:
    service.storage.create_bucket(BUCKET)
    files = service.storage.from_(BUCKET)
    fake.fail_next(2)
    fake.fail_next(1, bucket="other-bucket", operation="any")  # never matches here
    for _ in range(2):
        error = api_error(lambda: files.upload("a.mp4", b"x", UPSERT_MP4))
        assert (error.status, error.code) == ("503", "ServiceUnavailable")
    files.upload("a.mp4", b"x", UPSERT_MP4)
    assert fake.writes(BUCKET, "a.mp4") == 1
    uploads = [r.status for r in fake.requests if r.operation == "upload"]
    assert uploads == [503, 503, 200]
    assert fake.pending_faults == 1
    fake.clear_faults()

    fake.fail_next(1, status=500, operation="sign")
    assert api_error(lambda: files.create_signed_url("a.mp4", 60)).status == "500"
    assert files.create_signed_url("a.mp4", 60)["signedURL"]


def test_a_reset_fault_drops_the_connection(service: Client, fake: FakeStorage) -> None:
    service.storage.create_bucket(BUCKET)
    fake.fail_next(1, reset=True)
    with pytest.raises(httpx.TransportError):
        service.storage.from_(BUCKET).upload("a.mp4", b"x" * 100_000, MP4)
    assert fake.requests[-1].status == 0 and fake.objects == {}
    service.storage.from_(BUCKET).upload("a.mp4", b"x", MP4)
    assert fake.writes(BUCKET, "a.mp4") == 1


# --- listing and removal ---------------------------------------------------------------------------------


def test_list_and_remove(service: Client, fake: FakeStorage) -> None:
    service.storage.create_bucket(BUCKET)
    files = service.storage.from_(BUCKET)
    for path in ("job/clip_0.mp4", "job/clip_1.mp4", "job/thumbs/clip_0.jpg", "other/x.mp4", "top.txt"):
        files.upload(path, path.encode(), MP4)

    assert [e["name"] for e in files.list()] == ["job", "other", "top.txt"]
    listed = files.list("job")
    assert [e["name"] for e in listed] == ["clip_0.mp4", "clip_1.mp4", "thumbs"]
    assert listed[0]["metadata"]["mimetype"] == "video/mp4" and listed[0]["metadata"]["size"] == 14
    assert listed[2]["id"] is None and listed[2]["metadata"] is None  # a folder
    assert [e["name"] for e in files.list("job", {"search": "clip_1"})] == ["clip_1.mp4"]
    assert [e["name"] for e in files.list("job", {"limit": 1, "offset": 1})] == ["clip_1.mp4"]

    removed = files.remove(["job/clip_0.mp4", "job/missing.mp4"])
    assert [row["name"] for row in removed] == ["job/clip_0.mp4"]
    assert (BUCKET, "job/clip_0.mp4") not in fake.objects and len(fake.objects) == 4
    assert api_error(lambda: files.download("job/clip_0.mp4")).status == "404"


# --- the gateway -----------------------------------------------------------------------------------------


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
    echo = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST", "PATCH", "DELETE"])])
    with ServerThread(echo, name="echo") as upstream, SupabaseGateway(upstream.base_url, SECRET) as gateway:
        headers = {
            "apikey": SERVICE_KEY,
            "Authorization": f"Bearer {SERVICE_KEY}",
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
        with supabase(gateway.base_url, SERVICE_KEY) as client:
            result = client.table("clips").select("id,status").eq("job_id", "j").execute()
        echoed: Any = result.data[0]
        assert (echoed["method"], echoed["path"]) == ("GET", "/clips")
        assert echoed["query"] == "select=id%2Cstatus&job_id=eq.j"
        assert echoed["headers"]["authorization"] == f"Bearer {SERVICE_KEY}"

        empty = httpx.post(f"{gateway.base_url}/rest/v1/empty", headers=headers, content=b"{}")
        assert (empty.status_code, empty.content, empty.headers["content-range"]) == (204, b"", "*/*")
        assert "content-length" not in empty.headers
        head = httpx.head(f"{gateway.base_url}/rest/v1/clips?select=*", headers=headers)
        assert head.status_code == 201 and int(head.headers["content-length"]) > 0 and head.content == b""

        assert httpx.get(f"{gateway.base_url}/auth/v1/user").status_code == 404
    with SupabaseGateway("http://127.0.0.1:9", SECRET) as orphan:  # nothing listens on port 9
        assert httpx.get(f"{orphan.base_url}/rest/v1/clips").status_code == 502


def test_a_client_without_its_own_http_client_trips_a_deprecation_warning(gateway: SupabaseGateway) -> None:
    """supabase 2.34 hands storage3 the deprecated `timeout=` and `verify=` unless ClientOptions has an
    httpx_client: under `filterwarnings = error` that fails a test, so build clients as `supabase()` does."""
    client = create_client(gateway.base_url, SERVICE_KEY)
    with pytest.warns(DeprecationWarning) as caught:
        storage = client.storage
    storage.session.close()
    messages = sorted(str(warning.message).split("'")[1] for warning in caught)
    assert messages == ["timeout", "verify"]


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        make_key("short", "anon")
    with pytest.raises(ValueError, match="32 bytes"):
        FakeStorage("short")
