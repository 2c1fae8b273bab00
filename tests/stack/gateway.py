"""One base URL for supabase-py, like Supabase's API gateway: `/storage/v1/*` is the fake Storage
(`tests.stack.storage`), `/rest/v1/*` is proxied to a real PostgREST, anything else is Kong's 404.

    with SupabaseGateway(postgrest_url, jwt_secret) as gateway:
        key = make_key(jwt_secret, "service_role")
        http = httpx.Client()
        client = create_client(gateway.base_url, key, ClientOptions(httpx_client=http))
        gateway.storage.fail_next(2)
        ...

Pass your own `httpx_client` (and close it): without one, `client.storage` builds its own httpx client with
storage3's deprecated `timeout=` argument, a DeprecationWarning that `filterwarnings = error` turns into a
failure, and that client's sockets are never closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from clipgen.serving import ServerThread
from tests.stack.storage import FakeStorage, make_key

__all__ = ["ServerThread", "SupabaseGateway", "make_key"]

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection; host and length are the new request's own.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te"}
    | {"trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length"}
)


class SupabaseGateway:
    """The fake Storage and a PostgREST proxy on one socket; `storage` has the fake's controls and records
    (kept after `stop`, when the stored files are removed)."""

    def __init__(
        self, postgrest_url: str | None, jwt_secret: str, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._postgrest_url = postgrest_url.rstrip("/") if postgrest_url else None
        self._storage = FakeStorage(jwt_secret)
        self._http: httpx.AsyncClient | None = None
        routes = [
            Mount("/storage/v1", app=self._storage.app),
            Route("/rest/v1", self._proxy, methods=METHODS),
            Route("/rest/v1/{path:path}", self._proxy, methods=METHODS),
        ]
        app = Starlette(routes=routes, lifespan=self._lifespan)
        app.router.default = _no_route
        self._server = ServerThread(app, host=host, port=port, name="supabase-gateway", lifespan="on")

    @property
    def base_url(self) -> str:
        """What to give `create_client`."""
        return self._server.base_url

    @property
    def storage(self) -> FakeStorage:
        return self._storage

    def __enter__(self) -> SupabaseGateway:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
        self._storage.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # One pooled client for all proxied requests, made and closed on the server's own event loop.
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0)) as http:
            self._http = http
            try:
                yield
            finally:
                self._http = None

    async def _proxy(self, request: Request) -> Response:
        if self._postgrest_url is None or self._http is None:
            return JSONResponse({"message": "name resolution failed"}, 503)  # Kong, with no upstream
        url = f"{self._postgrest_url}/{request.path_params.get('path', '')}"
        # The raw query string: PostgREST's filters (`id=eq.1`, `or=(...)`) must arrive byte for byte.
        if query := request.scope["query_string"]:
            url += "?" + query.decode("latin-1")
        # Uncompressed from upstream: httpx would decode a compressed body, and the lengths and encoding we
        # pass back must describe the bytes we send.
        drop = HOP_BY_HOP | {"accept-encoding"}
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in drop]
        headers.append((b"accept-encoding", b"identity"))
        body = await request.body()
        try:
            upstream = await self._http.request(request.method, url, headers=headers, content=body or None)
        except httpx.TransportError:
            return JSONResponse({"message": "An invalid response was received from the upstream server"}, 502)
        response = Response(upstream.content, upstream.status_code)
        # raw_headers keeps repeated headers (set-cookie, vary). The length is the decoded body's, except
        # that a HEAD answer keeps the upstream's (that of the GET body) and a 204/304 has none.
        head = request.method == "HEAD"
        drop = (HOP_BY_HOP - {"content-length"} if head else HOP_BY_HOP) | {"content-encoding"}
        response.raw_headers = [
            (k, v) for k, v in upstream.headers.raw if k.decode("latin-1").lower() not in drop
        ]
        if not head and upstream.status_code not in (204, 304):
            response.raw_headers.append((b"content-length", str(len(upstream.content)).encode()))
        return response


async def _no_route(scope: Scope, receive: Receive, send: Send) -> None:
    """Kong's answer when no route matches."""
    await JSONResponse({"message": "no Route matched with those values"}, 404)(scope, receive, send)
