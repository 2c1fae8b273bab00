"""Reference images: real HTTP on loopback, data URIs and files; verified, cached by content, revalidated with
ETag / Last-Modified (a changed image is a new file), resolved once per job. And what a job may not point at:
private, loopback and metadata addresses (also behind redirects and DNS), files on the worker. The CLI stages
the files of a job: store:// references in the job, the images in the store."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import ipaddress
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from email.utils import formatdate, parsedate_to_datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, NamedTuple
from uuid import UUID, uuid4

import httpx
import pytest
from PIL import Image

from clipgen.errors import ValidationError
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.job_files import MAX_INLINE_DATA_URI_CHARS, read_job
from clipgen.planning import plan_job
from clipgen.reference_fetch import _PinnedTransport, address_refusal
from clipgen.references import MAX_IMAGE_BYTES, ReferencePolicy, resolve_reference
from clipgen.settings import Settings
from clipgen.stores.local import LocalStore
from commands.cli import main
from tests.conftest import EXAMPLE_JOB, write_job
from tests.open_counter import OpenCounter, open_counter

IMAGES = EXAMPLE_JOB.parent / "images"
FIELD = "clip_prompts[2].scene_reference_url"
LOOPBACK_OK = ReferencePolicy(allow_loopback=True)
FILES_OK = ReferencePolicy(allow_files=True)
ADA = (IMAGES / "ada.png").read_bytes()
BEN = (IMAGES / "ben.png").read_bytes()


class Seen(NamedTuple):
    """One request as the server saw it: its conditions and the status it was answered with."""

    path: str
    if_none_match: str | None
    if_modified_since: str | None
    status: int


class ImageHandler(SimpleHTTPRequestHandler):
    """Serves examples/images (with Last-Modified, answering If-Modified-Since as http.server does).
    /redirect?to=URL answers 302 to URL; /moved answers 302 to `moved_to`. /live/<validators>/<name> serves
    `live[name]`, an image a test can change (`change_live`), with an ETag ("etag"), a Last-Modified
    ("modified"), neither ("plain") or an ETag no client can send back ("odd"), and answers a conditional
    GET with 304 when it still matches.
    Records each path and Host header in `hits`, and each request's conditions and answer in `seen`."""

    hits: ClassVar[list[tuple[str, str]]] = []
    seen: ClassVar[list[Seen]] = []
    live: ClassVar[dict[str, bytes]] = {}
    version: ClassVar[int] = 0  # of the live images: each change makes a later Last-Modified
    moved_to: ClassVar[str] = ""

    def do_GET(self) -> None:
        ImageHandler.hits.append((self.path, self.headers.get("Host", "")))
        if self.path.startswith(("/redirect?to=", "/moved")):
            self.send_response(302)
            self.send_header("Location", self.path.partition("?to=")[2] or ImageHandler.moved_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/live/"):
            _, _, validators, name = self.path.split("/")
            self._send_live(validators, ImageHandler.live[name])
        else:
            super().do_GET()

    def _send_live(self, validators: str, body: bytes) -> None:
        etag, modified = etag_of(body), formatdate(1_700_000_000 + 60 * ImageHandler.version, usegmt=True)
        since = self.headers.get("If-Modified-Since")
        if (validators == "etag" and self.headers.get("If-None-Match") == etag) or (
            validators == "modified"
            and since
            and parsedate_to_datetime(since) >= parsedate_to_datetime(modified)
        ):
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        if validators == "etag":
            self.send_header("ETag", etag)
        if validators == "odd":
            self.send_header("ETag", '"caf\xe9"')  # sent as Latin-1; not ASCII, so not a header to send
        if validators == "modified":
            self.send_header("Last-Modified", modified)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_response(self, code: int, message: str | None = None) -> None:
        conditions = (self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since"))
        ImageHandler.seen.append(Seen(self.path, *conditions, code))
        super().send_response(code, message)

    def log_message(self, format: str, *args: object) -> None:
        pass


def etag_of(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:16]}"'


def change_live(name: str, body: bytes) -> None:
    ImageHandler.live[name] = body
    ImageHandler.version += 1


@contextlib.contextmanager
def serving() -> Iterator[str]:
    ImageHandler.hits, ImageHandler.seen, ImageHandler.live = [], [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(ImageHandler, directory=str(IMAGES)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def image_server() -> Iterator[str]:
    with serving() as url:
        yield url


def data_uri(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


# --- http(s): cached by content, revalidated, errors name the field -----------------------------------------


def test_http_reference_is_cached_and_revalidated(image_server: str, tmp_path: Path) -> None:
    # http.server itself: it sends Last-Modified and answers If-Modified-Since with 304.
    url = f"{image_server}/meadow.jpg"
    first = resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    second = resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    assert first == second
    assert first.read_bytes() == (IMAGES / "meadow.jpg").read_bytes()
    assert first.name == "sha256-" + hashlib.sha256(first.read_bytes()).hexdigest()
    [fetch, revalidation] = ImageHandler.seen
    assert (fetch.path, fetch.if_modified_since, fetch.status) == ("/meadow.jpg", None, 200)
    assert (revalidation.path, revalidation.status) == ("/meadow.jpg", 304)
    assert revalidation.if_modified_since is not None


@pytest.mark.parametrize("validators", ["etag", "modified", "plain"])
def test_a_changed_image_at_the_same_url_gets_a_new_path(
    image_server: str, validators: str, tmp_path: Path
) -> None:
    url = f"{image_server}/live/{validators}/scene.png"
    change_live("scene.png", ADA)
    before = resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    change_live("scene.png", BEN)
    after = resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    assert after != before
    assert after.read_bytes() == BEN
    assert before.read_bytes() == ADA  # never rewritten: the plan fingerprint hashes a path's file once
    assert [seen.status for seen in ImageHandler.seen] == [200, 200]


def test_an_unchanged_image_with_an_etag_is_revalidated_with_if_none_match(
    image_server: str, tmp_path: Path
) -> None:
    url = f"{image_server}/live/etag/scene.png"
    change_live("scene.png", ADA)
    first = resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    assert resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK) == first
    assert ImageHandler.seen == [
        Seen("/live/etag/scene.png", None, None, 200),
        Seen("/live/etag/scene.png", etag_of(ADA), None, 304),
    ]
    # The content file is gone (a cleaned cache): a 304 would leave nothing to use, so ask unconditionally.
    first.unlink()
    assert resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK) == first
    assert first.read_bytes() == ADA
    assert ImageHandler.seen[2:] == [Seen("/live/etag/scene.png", None, None, 200)]


def test_an_unchanged_image_with_a_last_modified_is_revalidated_with_if_modified_since(
    image_server: str, tmp_path: Path
) -> None:
    url = f"{image_server}/live/modified/scene.png"
    change_live("scene.png", ADA)
    first = resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    assert resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK) == first
    modified = formatdate(1_700_000_000 + 60 * ImageHandler.version, usegmt=True)
    assert ImageHandler.seen == [
        Seen("/live/modified/scene.png", None, None, 200),
        Seen("/live/modified/scene.png", None, modified, 304),
    ]


def test_without_validators_the_image_is_fetched_every_time_and_compared_by_content(
    image_server: str, tmp_path: Path
) -> None:
    url = f"{image_server}/live/plain/scene.png"
    change_live("scene.png", ADA)
    first = resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    assert resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK) == first
    assert ImageHandler.seen == [Seen("/live/plain/scene.png", None, None, 200)] * 2


def test_a_validator_that_cannot_be_sent_back_is_dropped(image_server: str, tmp_path: Path) -> None:
    # Kept, it would fail every later GET before it is sent (and never be replaced): compare bodies instead.
    url = f"{image_server}/live/odd/scene.png"
    change_live("scene.png", ADA)
    first = resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    assert resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK) == first
    assert ImageHandler.seen == [Seen("/live/odd/scene.png", None, None, 200)] * 2


def test_a_304_after_a_redirect_reuses_the_image(image_server: str, tmp_path: Path) -> None:
    url = f"{image_server}/redirect?to={image_server}/live/etag/scene.png"
    change_live("scene.png", ADA)
    first = resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    assert resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK) == first
    redirect = url.removeprefix(image_server)
    assert ImageHandler.seen == [
        Seen(redirect, None, None, 302),
        Seen("/live/etag/scene.png", None, None, 200),
        Seen(redirect, None, None, 302),  # the validators describe the image, not the redirect
        Seen("/live/etag/scene.png", etag_of(ADA), None, 304),
    ]
    # The entry per URL keeps digests of URLs, not their text (which may carry credentials or a signature).
    assert not any(b"/live/" in file.read_bytes() for file in tmp_path.iterdir())


def test_validators_go_only_to_the_resource_they_came_from(image_server: str, tmp_path: Path) -> None:
    # The URL redirects elsewhere now, to an image with the same Last-Modified: a 304 from it would keep the
    # old image, so the new target is asked unconditionally.
    ImageHandler.live = {"a.png": ADA, "b.png": BEN}
    ImageHandler.moved_to = f"{image_server}/live/modified/a.png"
    before = resolve_reference(f"{image_server}/moved", FIELD, tmp_path, LOOPBACK_OK)
    ImageHandler.moved_to = f"{image_server}/live/modified/b.png"
    after = resolve_reference(f"{image_server}/moved", FIELD, tmp_path, LOOPBACK_OK)
    assert (before.read_bytes(), after.read_bytes()) == (ADA, BEN)
    assert ImageHandler.seen[-1] == Seen("/live/modified/b.png", None, None, 200)


def test_a_cached_reference_that_cannot_be_revalidated_is_refused(tmp_path: Path) -> None:
    # Not silently the image fetched last time: it may have changed, and the plan would not show it.
    with serving() as server:
        url = f"{server}/meadow.jpg"
        resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    with pytest.raises(ValidationError, match=rf"^{re.escape(FIELD)}: .*/meadow.jpg is unreachable"):
        resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)


def test_a_body_that_is_no_image_is_refused_and_nothing_is_cached(image_server: str, tmp_path: Path) -> None:
    change_live("notes.png", b"plain text, not a PNG")
    url = f"{image_server}/live/plain/notes.png"
    with pytest.raises(
        ValidationError, match=rf"^{re.escape(FIELD)}: not an image \({re.escape(url)} is not"
    ) as refused:
        resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    assert ".ref-" not in str(refused.value)  # names the reference, not a temporary file
    assert list(tmp_path.iterdir()) == []


def test_http_errors_name_the_field(image_server: str, tmp_path: Path) -> None:
    with pytest.raises(
        ValidationError, match=r"^clip_prompts\[2\]\.scene_reference_url: .* answered HTTP 404"
    ):
        resolve_reference(f"{image_server}/missing.jpg", FIELD, tmp_path, LOOPBACK_OK)


def shared_scene_job(url: str, clips: int = 20) -> ClipPrompts:
    prompts = [
        {"clip_index": i, "prompt": f"clip {i}", "duration": 4.0, "scene_reference_url": url}
        for i in range(clips)
    ]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts})


def test_planning_resolves_a_reference_shared_by_20_clips_once(
    image_server: str, tmp_path: Path, reads: OpenCounter
) -> None:
    reads.arm(tmp_path, reads_only=True)
    change_live("scene.png", ADA)
    job = shared_scene_job(f"{image_server}/live/etag/scene.png")
    resolve = functools.partial(resolve_reference, cache_dir=tmp_path, policy=LOOPBACK_OK)
    first = plan_job(job, GenerationOptions(model="veo-3.1"), resolve)
    assert len({clip.scene_image for clip in first.clips}) == 1 and len(first.clips) == 20
    assert [seen.status for seen in ImageHandler.seen] == [200]
    assert image_reads(reads) == 1, reads.opened
    # A rerun plans again: one conditional GET for the job, and the image is not decoded again.
    again = plan_job(job, GenerationOptions(model="veo-3.1"), resolve)
    assert [clip.scene_image for clip in again.clips] == [clip.scene_image for clip in first.clips]
    assert [seen.status for seen in ImageHandler.seen] == [200, 304]
    assert image_reads(reads) == 1, reads.opened


def test_a_refused_reference_shared_by_clips_is_fetched_and_reported_once(
    image_server: str, tmp_path: Path
) -> None:
    job = shared_scene_job(f"{image_server}/missing.jpg")
    resolve = functools.partial(resolve_reference, cache_dir=tmp_path, policy=LOOPBACK_OK)
    with pytest.raises(ValidationError) as refused:
        plan_job(job, GenerationOptions(model="veo-3.1"), resolve)
    [problem] = refused.value.problems
    assert problem.field == "clip_prompts[0].scene_reference_url" and "answered HTTP 404" in problem.message
    assert [path for path, _ in ImageHandler.hits] == ["/missing.jpg"]


# --- where a fetch may connect ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("10.0.0.5", "a private address 10.0.0.5"),
        ("172.16.3.4", "a private address 172.16.3.4"),
        ("192.168.1.1", "a private address 192.168.1.1"),
        ("127.0.0.1", "a loopback address 127.0.0.1"),
        ("127.8.9.10", "a loopback address 127.8.9.10"),
        ("::1", "a loopback address ::1"),
        ("169.254.169.254", "a link-local address 169.254.169.254"),
        ("fe80::1", "a link-local address fe80::1"),
        ("224.0.0.251", "a multicast address 224.0.0.251"),
        ("ff02::1", "a multicast address ff02::1"),
        ("0.0.0.0", "an unspecified address 0.0.0.0"),
        ("::", "an unspecified address ::"),
        ("240.0.0.1", "a private address 240.0.0.1"),
        ("fc00::1", "a private address fc00::1"),
        ("100.64.0.1", "a non-public address 100.64.0.1"),
        ("::ffff:10.0.0.5", "a private address ::ffff:a00:5 (IPv4 10.0.0.5)"),
        ("::ffff:127.0.0.1", "a loopback address ::ffff:7f00:1 (IPv4 127.0.0.1)"),
        ("::ffff:169.254.169.254", "a link-local address ::ffff:a9fe:a9fe (IPv4 169.254.169.254)"),
        ("2002:a00:5::1", "a private address 2002:a00:5::1 (IPv4 10.0.0.5)"),
        ("64:ff9b::a00:5", "a private address 64:ff9b::a00:5 (IPv4 10.0.0.5)"),
        ("64:ff9b::808:808", None),  # NAT64: a public IPv4 site on an IPv6-only network
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_which_addresses_are_refused(address: str, refusal: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == refusal


def test_allowing_loopback_allows_loopback_only() -> None:
    for allowed in ("127.0.0.1", "127.255.0.1", "::1", "::ffff:127.0.0.1"):
        assert address_refusal(ipaddress.ip_address(allowed), allow_loopback=True) is None
    for refused in ("10.0.0.5", "169.254.169.254", "192.168.0.1", "0.0.0.0", "fd00::1"):
        assert address_refusal(ipaddress.ip_address(refused), allow_loopback=True) is not None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.5/scene.jpg", "resolves to a private address 10.0.0.5"),
        ("http://169.254.169.254/latest/meta-data/", "resolves to a link-local address 169.254.169.254"),
        ("http://[::ffff:10.0.0.5]/a.jpg", r"resolves to a private address ::ffff:a00:5 \(IPv4 10.0.0.5\)"),
        ("https://192.168.1.1:8443/a.jpg", "resolves to a private address 192.168.1.1"),
        ("http://0x7f000001/a.jpg", "resolves to a loopback address 127.0.0.1"),  # what resolvers make of it
        ("http://localhost:9/a.jpg", "resolves to a loopback address"),
    ],
)
def test_private_and_loopback_urls_are_refused_without_connecting(
    url: str, reason: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match=rf"^clip_prompts\[2\]\.scene_reference_url: .*{reason}"):
        resolve_reference(url, FIELD, tmp_path, ReferencePolicy())


def test_a_loopback_refusal_says_how_to_allow_it(image_server: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        resolve_reference(f"{image_server}/meadow.jpg", FIELD, tmp_path, ReferencePolicy())
    assert "VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES=true" in str(refused.value)
    assert ImageHandler.hits == []  # refused before connecting


def test_the_loopback_setting_is_read_from_the_environment(
    image_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match="loopback"):
        resolve_reference(f"{image_server}/meadow.jpg", FIELD, tmp_path)
    monkeypatch.setenv("VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES", "true")
    assert resolve_reference(f"{image_server}/meadow.jpg", FIELD, tmp_path).is_file()


def test_a_fetch_made_while_loopback_was_allowed_is_not_reused_after(
    image_server: str, tmp_path: Path
) -> None:
    url = f"{image_server}/meadow.jpg"
    resolve_reference(url, FIELD, tmp_path, LOOPBACK_OK)
    with pytest.raises(ValidationError, match="loopback"):
        resolve_reference(url, FIELD, tmp_path, ReferencePolicy())


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://10.0.0.5/scene.jpg", "which resolves to a private address 10.0.0.5"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "which resolves to a link-local address 169.254.169.254",
        ),
        ("http://[fd12::5]/a.jpg", "which resolves to a private address fd12::5"),
        ("file:///etc/passwd", "only http\\(s\\) redirects are followed"),
        ("gopher://127.0.0.1:6379/_INFO", "only http\\(s\\) redirects are followed"),
    ],
)
def test_redirects_into_private_ranges_or_other_schemes_are_refused(
    image_server: str, target: str, reason: str, tmp_path: Path
) -> None:
    # Loopback allowed, so the first hop (our server) is fetched; the hop it redirects to is not.
    with pytest.raises(ValidationError, match=rf"^{re.escape(FIELD)}: .*{reason}"):
        resolve_reference(f"{image_server}/redirect?to={target}", FIELD, tmp_path, LOOPBACK_OK)
    assert len(ImageHandler.hits) == 1


def test_redirects_are_followed_three_times_at_most(image_server: str, tmp_path: Path) -> None:
    def hops(n: int) -> str:
        url = f"{image_server}/meadow.jpg"
        for _ in range(n):
            url = f"{image_server}/redirect?to={url}"
        return url

    assert resolve_reference(hops(3), FIELD, tmp_path, LOOPBACK_OK).read_bytes() == (
        (IMAGES / "meadow.jpg").read_bytes()
    )
    with pytest.raises(ValidationError, match="redirects more than 3 times"):
        resolve_reference(hops(4), FIELD, tmp_path, LOOPBACK_OK)


Resolver = Callable[..., Any]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, list[list[str]]], list[str]]:
    """Names under .test resolve to scripted answers, one per lookup (the last repeats), like a DNS server
    whose records change; every lookup of them is recorded. Other names resolve as usual."""
    real: Resolver = socket.getaddrinfo
    lookups: list[str] = []
    answers: dict[str, list[list[str]]] = {}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(name)
        script = answers[name]
        addresses = script.pop(0) if len(script) > 1 else script[0]
        return [
            info
            for address in addresses
            for info in real(address, port, *args, **kwargs)  # numeric: no lookup
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    def script(name: str, answers_in_order: list[list[str]]) -> list[str]:
        answers[name] = answers_in_order
        return lookups

    return script


def test_the_connection_goes_to_the_checked_address_not_a_rebound_one(
    fake_dns: Callable[[str, list[list[str]]], list[str]], image_server: str, tmp_path: Path
) -> None:
    # DNS rebinding: the first answer passes the check, the next would point elsewhere. The fetch must
    # connect to the first answer and keep the name in the Host header.
    port = image_server.rsplit(":", 1)[1]
    lookups = fake_dns("images.test", [["127.0.0.1"], ["10.0.0.5"]])
    path = resolve_reference(f"http://images.test:{port}/dusk.jpg", FIELD, tmp_path, LOOPBACK_OK)
    assert path.read_bytes() == (IMAGES / "dusk.jpg").read_bytes()
    assert lookups == ["images.test"]
    assert ImageHandler.hits == [("/dusk.jpg", f"images.test:{port}")]


def test_https_is_sent_to_the_checked_address_with_the_name_for_tls(
    fake_dns: Callable[[str, list[list[str]]], list[str]],
) -> None:
    """The certificate is checked against the name (the TLS server name) while the socket goes to the
    address that was checked: seen where the pinned transport hands the request on to open a socket."""
    fake_dns("cdn.test", [["93.184.216.34"]])
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"image")

    transport = _PinnedTransport(allow_loopback=False)
    transport._inner = httpx.MockTransport(answer)  # type: ignore[assignment]  # where sockets would open
    with httpx.Client(transport=transport) as client:
        assert client.get("https://cdn.test:8443/a.jpg?v=1").content == b"image"
    [request] = sent
    assert str(request.url) == "https://93.184.216.34:8443/a.jpg?v=1"
    assert request.headers["host"] == "cdn.test:8443"
    assert request.extensions["sni_hostname"] == "cdn.test"


def test_a_name_with_any_private_address_is_refused(
    fake_dns: Callable[[str, list[list[str]]], list[str]], tmp_path: Path
) -> None:
    fake_dns("cdn.test", [["8.8.8.8", "10.1.2.3"]])
    with pytest.raises(
        ValidationError, match=r"http://cdn.test/a.jpg resolves to a private address 10.1.2.3"
    ):
        resolve_reference("http://cdn.test/a.jpg", FIELD, tmp_path, ReferencePolicy())


def test_every_redirect_hop_is_resolved_and_checked(
    fake_dns: Callable[[str, list[list[str]]], list[str]], image_server: str, tmp_path: Path
) -> None:
    lookups = fake_dns("internal.test", [["192.168.7.7"]])
    with pytest.raises(
        ValidationError,
        match=r"redirects to http://internal.test/secret.jpg, which resolves to a private address 192\.168",
    ):
        resolve_reference(
            f"{image_server}/redirect?to=http://internal.test/secret.jpg", FIELD, tmp_path, LOOPBACK_OK
        )
    assert lookups == ["internal.test"]


def test_a_name_that_does_not_resolve_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"its host no-such-host.invalid does not resolve"):
        resolve_reference("http://no-such-host.invalid/a.jpg", FIELD, tmp_path, ReferencePolicy())


def test_credentials_in_a_url_are_not_repeated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        resolve_reference("http://alice:hunter2@10.0.0.5/a.jpg", FIELD, tmp_path, ReferencePolicy())
    assert "hunter2" not in str(refused.value) and "10.0.0.5" in str(refused.value)


# --- data: URIs -------------------------------------------------------------------------------------------


def test_data_uri(tmp_path: Path) -> None:
    path = resolve_reference(data_uri(IMAGES / "ada.png"), "f", tmp_path, ReferencePolicy())
    assert path.read_bytes() == (IMAGES / "ada.png").read_bytes()


@pytest.fixture
def reads() -> Iterator[OpenCounter]:
    """Counts the reads of files under the test's cache folder once armed (decoding a cached image reads
    it; revalidating or reusing it must not)."""
    counter = open_counter()
    yield counter
    counter.disarm()


def image_reads(reads: OpenCounter) -> int:
    """Reads of image bytes in the cache (`sha256-<hex>`, or its `.part` while it is verified), not of a
    URL's validators."""
    return sum(n for path, n in reads.opened.items() if Path(path).name.lstrip(".").startswith("sha256-"))


def test_data_uris_are_cached_by_content_and_verified_once(tmp_path: Path, reads: OpenCounter) -> None:
    reads.arm(tmp_path, reads_only=True)
    png = resolve_reference(data_uri(IMAGES / "ada.png"), "f", tmp_path, ReferencePolicy())
    same_bytes = resolve_reference(
        data_uri(IMAGES / "ada.png", "image/x-png"), "f", tmp_path, ReferencePolicy()
    )
    assert png == same_bytes
    assert png.name == "sha256-" + hashlib.sha256(ADA).hexdigest()
    assert image_reads(reads) == 1, reads.opened  # a file under its content name has passed already


def test_text_data_uri_is_not_base64(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="data URI must be base64"):
        resolve_reference("data:text/plain,hello", "f", tmp_path, ReferencePolicy())


def test_an_oversized_data_uri_is_refused_and_never_quoted(tmp_path: Path) -> None:
    uri = "data:image/png;base64," + "A" * (MAX_IMAGE_BYTES * 4 // 3 + 8)
    with pytest.raises(ValidationError, match=r"^f: data URI is larger than 20 MB$"):
        resolve_reference(uri, "f", tmp_path, ReferencePolicy())
    with pytest.raises(ValidationError) as refused:
        resolve_reference("data:image/png;base64," + "B" * 5000, "f", tmp_path, ReferencePolicy())
    assert "BBBB" not in str(refused.value)


def test_unsupported_schemes_are_quoted_short(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        resolve_reference("ftp://example.com/" + "x" * 500, "f", tmp_path, ReferencePolicy())
    message = str(refused.value)
    assert "unsupported reference" in message and len(message) < 150


# --- files: refused unless allowed -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [str(IMAGES / "ada.png"), (IMAGES / "ada.png").as_uri(), "images/ada.png", "/etc/passwd", "~/.ssh/id"],
)
def test_file_references_are_refused_by_default(ref: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        resolve_reference(ref, FIELD, tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{FIELD}: file references are refused")
    assert "http(s)" in message and "data:" in message and "VIDEO_GENERATOR_ALLOW_FILE_REFERENCES" in message


def test_file_references_when_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ada = IMAGES / "ada.png"
    assert resolve_reference(str(ada), "f", tmp_path, FILES_OK) == ada.resolve()
    assert resolve_reference(ada.as_uri(), "f", tmp_path, FILES_OK) == ada.resolve()
    monkeypatch.setenv("VIDEO_GENERATOR_ALLOW_FILE_REFERENCES", "true")
    assert resolve_reference(str(ada), "f", tmp_path) == ada.resolve()
    with pytest.raises(ValidationError, match="file not found"):
        resolve_reference(str(tmp_path / "nope.png"), "f", tmp_path)


def test_both_settings_default_off(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.allow_file_references, settings.allow_loopback_references) == (False, False)
    monkeypatch.setenv("VIDEO_GENERATOR_ALLOW_FILE_REFERENCES", "1")
    monkeypatch.setenv("VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES", "yes")
    assert ReferencePolicy.from_settings() == ReferencePolicy(allow_files=True, allow_loopback=True)


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_refuses_a_file_path_from_a_job_before_any_clip(data_dir: Path) -> None:
    """As a job from the UI, the API or the queue arrives: straight to the flow, not through the CLI."""
    from flows.video_generator import generate_video_clips

    job = ClipPrompts.model_validate(
        {
            "job_id": str(uuid4()),
            "clip_prompts": [
                {"clip_index": 0, "prompt": "p", "duration": 4.0, "scene_reference_url": "/etc/hostname"},
                {
                    "clip_index": 1,
                    "prompt": "q",
                    "duration": 4.0,
                    "scene_reference_url": str(IMAGES / "ada.png"),
                },
            ],
        }
    )
    state = generate_video_clips(job, GenerationOptions(model="veo-3.1"), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "clip_prompts[0].scene_reference_url: file references are refused" in message
    assert "clip_prompts[1].scene_reference_url: file references are refused" in message
    assert LocalStore(data_dir).clip_records(job.job_id) == []


# --- the CLI stages a job's files: store:// references in the job, the bytes in the store ------------------


def store_ref(data: bytes, ext: str) -> str:
    return f"store://clip-references/sha256/{hashlib.sha256(data).hexdigest()}.{ext}"


def test_read_job_names_files_by_store_reference_with_their_type(example_job: Path, tmp_path: Path) -> None:
    raw = json.loads(example_job.read_text())
    job_file = read_job(example_job, tmp_path / "cache")
    images = example_job.parent / "images"
    for before, after in zip(raw["clip_prompts"], job_file.job.clip_prompts, strict=True):
        characters = zip(before["character_reference_urls"], after.character_reference_urls, strict=True)
        refs = [(before["scene_reference_url"], after.scene_reference_url), *characters]
        for original, staged in refs:
            if not original:
                assert staged is None
            elif original.startswith("data:"):
                assert staged == original  # a small data: URI is left as it was
            else:
                ext = "png" if original.endswith(".png") else "jpg"
                assert staged == store_ref((images / Path(original).name).read_bytes(), ext)
    # Each image once, with its type, though clips share them; nothing is uploaded by reading.
    assert sorted(i.content_type for i in job_file.images) == ["image/jpeg"] * 3 + ["image/png"] * 2
    assert not (Settings().data_dir / "storage").exists()


def test_file_urls_absolute_paths_and_long_data_uris_are_staged_too(tmp_path: Path) -> None:
    webp = tmp_path / "photo.webp"
    Image.new("RGB", (64, 36), "orange").save(webp)
    long_uri = data_uri(IMAGES / "dusk.jpg", "image/jpeg")
    assert len(long_uri) > MAX_INLINE_DATA_URI_CHARS
    job: dict[str, object] = {
        "job_id": str(uuid4()),
        "clip_prompts": [
            {"clip_index": 0, "prompt": "p", "duration": 4, "scene_reference_url": webp.as_uri()},
            {"clip_index": 1, "prompt": "q", "duration": 4, "scene_reference_url": str(IMAGES / "dusk.jpg")},
            {"clip_index": 2, "prompt": "r", "duration": 4, "scene_reference_url": long_uri},
        ],
    }
    loaded = read_job(write_job(tmp_path / "job.json", job), tmp_path / "cache", allow_any_file=True)
    scenes = [prompt.scene_reference_url for prompt in loaded.job.clip_prompts]
    dusk = store_ref((IMAGES / "dusk.jpg").read_bytes(), "jpg")
    assert scenes == [store_ref(webp.read_bytes(), "webp"), dusk, dusk]
    assert [image.content_type for image in loaded.images] == ["image/webp", "image/jpeg"]


def bad_file_job(tmp_path: Path, **refs: Any) -> Path:
    prompt = {"clip_index": 0, "prompt": "p", "duration": 4.0, "character_reference_urls": []} | refs
    return write_job(tmp_path / "job.json", {"job_id": str(uuid4()), "clip_prompts": [prompt]})


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda d: {"scene_reference_url": "nope.jpg"},
            "clip_prompts[0].scene_reference_url: file not found",
        ),
        (
            lambda d: {"character_reference_urls": [str(IMAGES / "ada.png"), "job.json"]},
            "clip_prompts[0].character_reference_urls[1]: not an image",
        ),
        (lambda d: {"scene_reference_url": str(d)}, "clip_prompts[0].scene_reference_url: not a file"),
        (lambda d: {"object_reference_urls": ["big.png"]}, "clip_prompts[0].object_reference_urls[0]: "),
    ],
    ids=["missing", "not an image", "a directory", "too big"],
)
@pytest.mark.parametrize("command", ["run", "submit"])
def test_the_cli_refuses_files_it_cannot_stage(
    make: Callable[[Path], dict[str, Any]],
    expected: str,
    command: str,
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with (tmp_path / "big.png").open("wb") as big:
        big.truncate(MAX_IMAGE_BYTES + 1)  # sparse: the size is refused before anything is read
    job = bad_file_job(tmp_path, **({"character_reference_urls": [str(IMAGES / "ada.png")]} | make(tmp_path)))
    assert main([command, str(job), "--model", "veo-3.1"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    if "big" in expected or "object" in expected:
        assert "is larger than 20 MB" in err
    assert not (data_dir / "video_generator.db").exists()
    assert not (data_dir / "storage").exists()  # a refused job uploads nothing, not even its good images


def test_submit_queues_the_job_with_its_images_in_the_store(example_job: Path, data_dir: Path) -> None:
    assert main(["submit", str(example_job), "--model", "veo-3.1"]) == 0
    queued = LocalStore(data_dir).queued_job(UUID(json.loads(example_job.read_text())["job_id"]))
    assert queued is not None
    refs = [p["scene_reference_url"] for p in queued.job["clip_prompts"] if p["scene_reference_url"]]
    refs += [r for p in queued.job["clip_prompts"] for r in p["character_reference_urls"]]
    stored = [ref for ref in refs if ref.startswith("store://clip-references/sha256/")]
    assert len(set(stored)) == 5 and len(refs) - len(stored) == 1  # the small data: URI stays inline
    # The queued job plans on a worker that may not read files and has none of it cached.
    job = ClipPrompts.model_validate(queued.job)
    store = LocalStore(data_dir)
    for ref in refs:
        path = resolve_reference(ref, "f", data_dir / "worker-cache", ReferencePolicy(), lambda: store)
        assert path.is_file()
    assert job.job_id == queued.job_id


@pytest.mark.parametrize(
    "ref", ["ftp://[example.com/a.png", "x://a\uff03b/a.png", "nul \x00 inside", "\ud800"]
)
def test_references_that_are_no_url_or_path_are_left_to_the_job_model(
    ref: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = bad_file_job(tmp_path, character_reference_urls=[ref])
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "clip_prompts[0].character_reference_urls[0]: " in err and "Traceback" not in err


def test_a_direct_caller_gets_a_refusal_for_an_unparseable_reference(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"^f: not a URL or data: URI"):
        resolve_reference("http://[::1/a.png", "f", tmp_path, ReferencePolicy())
    with pytest.raises(ValidationError, match=r"^f: file not found"):
        resolve_reference("a\x00b.png", "f", tmp_path, FILES_OK)
