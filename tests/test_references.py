"""Reference images over real HTTP on loopback, as data URIs and as files: fetched once, verified, cached."""

from __future__ import annotations

import base64
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from clipgen.errors import ValidationError
from clipgen.references import resolve_reference
from tests.conftest import EXAMPLE_JOB

IMAGES = EXAMPLE_JOB.parent / "images"


class CountingHandler(SimpleHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        CountingHandler.hits.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    CountingHandler.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(IMAGES)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_reference_is_fetched_once_and_cached(image_server: str, tmp_path: Path) -> None:
    url = f"{image_server}/meadow.jpg"
    first = resolve_reference(url, "clip_prompts[0].scene_reference_url", tmp_path)
    second = resolve_reference(url, "clip_prompts[0].scene_reference_url", tmp_path)
    assert first == second
    assert first.read_bytes() == (IMAGES / "meadow.jpg").read_bytes()
    assert CountingHandler.hits == ["/meadow.jpg"]


def test_http_errors_name_the_field(image_server: str, tmp_path: Path) -> None:
    with pytest.raises(
        ValidationError, match=r"^clip_prompts\[1\]\.scene_reference_url: .* answered HTTP 404"
    ):
        resolve_reference(f"{image_server}/missing.jpg", "clip_prompts[1].scene_reference_url", tmp_path)


def test_data_uri_and_file_path(tmp_path: Path) -> None:
    data = (IMAGES / "ada.png").read_bytes()
    from_uri = resolve_reference("data:image/png;base64," + base64.b64encode(data).decode(), "f", tmp_path)
    assert from_uri.read_bytes() == data
    assert resolve_reference(str(IMAGES / "ada.png"), "f", tmp_path) == (IMAGES / "ada.png").resolve()
    assert resolve_reference((IMAGES / "ada.png").as_uri(), "f", tmp_path) == (IMAGES / "ada.png").resolve()


def test_text_data_uri_is_not_base64(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="data URI must be base64"):
        resolve_reference("data:text/plain,hello", "f", tmp_path)
