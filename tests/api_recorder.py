"""A recording reverse proxy for the Prefect API: what a flow run asked of the server, in order.

    upstream = PREFECT_API_URL.value()
    with RecordingProxy(upstream) as proxy, temporary_settings({PREFECT_API_URL: proxy.api_url}):
        ...                                   # a real flow run, its API calls through the proxy
    [r for r in proxy.requests if r.method == "PATCH"]

`slow_paths` makes the server answer late, as a loaded one does: a request whose path ends with one of its
keys is held that many seconds before it is passed on.

HTTP only: Prefect's events travel over a websocket that its events worker opened when the process first
emitted one (the worker outlives settings changes), straight to the server. Bodies pass on byte for byte.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import httpx
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from staging.serving import ServerThread

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
WORKERS_DRAIN_S = 10.0
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"})


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    status: int
    arrived: float  # time.monotonic() when the proxy received it


class RecordingProxy:
    """Forwards every request to `upstream_api_url`'s server and records it."""

    def __init__(self, upstream_api_url: str, slow_paths: Mapping[str, float] | None = None) -> None:
        parts = urlsplit(upstream_api_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._api_path = parts.path
        self._lock = threading.Lock()
        self._requests: list[ApiRequest] = []
        self._slow_paths = dict(slow_paths or {})
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=METHODS)])
        self._server = ServerThread(app, name="prefect-api-recorder")

    @property
    def api_url(self) -> str:
        return f"{self._server.base_url}{self._api_path}"

    @property
    def requests(self) -> list[ApiRequest]:
        with self._lock:
            return list(self._requests)

    def __enter__(self) -> RecordingProxy:
        self._server.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Send what Prefect's log and event workers still hold while the proxy can pass it on: a worker made
        # for the proxy's URL would otherwise retry it for a minute once the proxy is gone.
        APILogWorker.drain_all(timeout=WORKERS_DRAIN_S, at_exit=False)
        EventsWorker.drain_all(timeout=WORKERS_DRAIN_S, at_exit=False)
        self._server.stop()

    async def _forward(self, request: Request) -> Response:
        arrived = time.monotonic()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        for suffix, delay_s in self._slow_paths.items():
            if request.url.path.endswith(suffix):
                await asyncio.sleep(delay_s)
        async with httpx.AsyncClient(base_url=self._origin, timeout=60) as client:
            answer = await client.request(
                request.method,
                request.url.path,
                params=str(request.query_params),
                headers=headers,
                content=await request.body(),
            )
        with self._lock:
            self._requests.append(ApiRequest(request.method, request.url.path, answer.status_code, arrived))
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        return Response(answer.content, status_code=answer.status_code, headers=kept)
