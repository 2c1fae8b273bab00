"""One base URL for supabase-py, like Supabase's API gateway: `/rest/v1/*` is proxied to a real PostgREST,
`/storage/v1/*` to the real Storage server (tests.stack.storage_server) through a thin fault-injecting layer,
anything else is Kong's 404.

    with SupabaseGateway(postgrest_url, storage_url) as gateway:
        client = create_client(gateway.base_url, service_key, ClientOptions(httpx_client=http))
        gateway.storage.fail_next(2, status=503, bucket="video-clips", operation="upload")
        ...
        [r.status for r in gateway.storage.requests]

Bodies stream both ways (multi-MB uploads, Range downloads), and every header but the hop-by-hop ones passes
through. Faults fire before the request reaches Storage, as an outage in front of it would.

Pass your own `httpx_client` to supabase-py (and close it): without one, `client.storage` builds its own with
storage3's deprecated `timeout=` argument, a DeprecationWarning that `filterwarnings = error` turns into a
failure, and that client's sockets are never closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Literal

import httpx
import jwt
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from staging.serving import DropConnection, ServerThread

__all__ = ["Operation", "RequestRecord", "ServerThread", "StorageFaults", "SupabaseGateway"]

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection; host is the new request's own. The length
# passes through: the bodies are passed on byte for byte.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te"}
    | {"trailer", "trailers", "transfer-encoding", "upgrade", "host"}
)
Operation = Literal["upload", "sign", "download", "info", "list", "remove", "bucket", "any"]


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # decoded, with the /storage/v1 prefix
    status: int  # 0: the connection was reset instead
    role: str | None  # the bearer JWT's `role` claim, read without verifying it
    operation: Operation
    bucket: str | None


@dataclass
class _Fault:
    remaining: int
    status: int
    bucket: str | None
    operation: Operation
    reset: bool
    delay_s: float

    def matches(self, operation: Operation, bucket: str | None) -> bool:
        return self.operation in ("any", operation) and self.bucket in (None, bucket)

    def response(self) -> Response:
        if self.reset:
            return DropConnection()
        # Shaped like Storage's errors, so storage3 raises StorageApiError with .status == str(status).
        phrase = HTTPStatus(self.status).phrase
        body = {
            "statusCode": str(self.status),
            "error": phrase.replace(" ", ""),
            "message": f"{phrase} (injected)",
        }
        return JSONResponse(body, self.status)


class StorageFaults:
    """The fault controls and the request record of `/storage/v1`. Thread-safe: tests use it while the
    gateway serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._requests: list[RequestRecord] = []

    def fail_next(
        self,
        n: int,
        status: int = 503,
        bucket: str | None = None,
        operation: Operation = "upload",
        *,
        reset: bool = False,
    ) -> None:
        """Answer the next `n` matching requests with `status` (a Storage-shaped body), or reset their
        connection (`reset=True`), without passing them on. `operation="any"` matches every request."""
        self._add(_Fault(n, status, bucket, operation, reset, 0.0))

    def delay_next(
        self, n: int, seconds: float, bucket: str | None = None, operation: Operation = "any"
    ) -> None:
        """Hold the next `n` matching requests for `seconds` before passing them on."""
        self._add(_Fault(n, 0, bucket, operation, False, seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(fault.remaining for fault in self._faults)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _add(self, fault: _Fault) -> None:
        if fault.remaining > 0:
            with self._lock:
                self._faults.append(fault)

    def _take(self, operation: Operation, bucket: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(operation, bucket):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)


def classify(method: str, path: str) -> tuple[Operation, str | None]:
    """Which Storage operation a request under /storage/v1 is, and its bucket (routes of storage's
    src/http/routes: static segments such as sign, list, info win over /object/{bucket}/...)."""
    parts = path.strip("/").split("/")
    if parts[0] == "bucket":
        return "bucket", parts[1] if len(parts) > 1 else None
    if parts[0] != "object" or len(parts) < 2:
        return "any", None
    kind, rest = parts[1], parts[2:]
    if kind == "sign":
        return ("download" if method in ("GET", "HEAD") else "sign"), (rest[0] if rest else None)
    if kind == "upload" and rest[:1] == ["sign"]:  # signed upload URLs: make one (POST) or use it (PUT)
        return ("sign" if method == "POST" else "upload"), (rest[1] if len(rest) > 1 else None)
    if kind == "list":
        return "list", (rest[0] if rest else None)
    if kind == "info":
        rest = rest[1:] if rest[:1] in (["authenticated"], ["public"]) else rest
        return "info", (rest[0] if rest else None)
    if kind in ("authenticated", "public"):
        return "download", (rest[0] if rest else None)
    if method == "DELETE":
        return "remove", kind
    if method in ("POST", "PUT"):
        return "upload", kind
    return ("info" if method == "HEAD" else "download"), kind


def unverified_role(request: Request) -> str | None:
    token = re.sub(r"^Bearer\s+", "", request.headers.get("authorization", ""), flags=re.IGNORECASE)
    token = token or request.headers.get("apikey", "")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return str(role) if role is not None else None


class SupabaseGateway:
    """PostgREST and Storage behind one socket; `storage` has the fault controls and the request record
    (kept after `stop`)."""

    def __init__(
        self,
        postgrest_url: str | None,
        storage_url: str | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._upstreams = {
            "rest": postgrest_url.rstrip("/") if postgrest_url else None,
            "storage": storage_url.rstrip("/") if storage_url else None,
        }
        self.storage = StorageFaults()
        self._http: httpx.AsyncClient | None = None
        routes = [
            Route("/rest/v1", self._rest, methods=METHODS),
            Route("/rest/v1/{path:path}", self._rest, methods=METHODS),
            Route("/storage/v1/{path:path}", self._storage, methods=METHODS),
        ]
        app = Starlette(routes=routes, lifespan=self._lifespan)
        app.router.default = _no_route
        self._server = ServerThread(app, host=host, port=port, name="supabase-gateway", lifespan="on")

    @property
    def base_url(self) -> str:
        """What to give `create_client`."""
        return self._server.base_url

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

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # One pooled client for all proxied requests, made and closed on the server's own event loop.
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0)) as http:
            self._http = http
            try:
                yield
            finally:
                self._http = None

    async def _rest(self, request: Request) -> Response:
        return await self._forward(request, "rest", "/rest/v1")

    async def _storage(self, request: Request) -> Response:
        operation, bucket = classify(request.method, request.path_params["path"])
        fault = self.storage._take(operation, bucket)
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
            fault = None
        if fault is None:
            response = await self._forward(request, "storage", "/storage/v1")
            status = response.status_code
        else:
            # Read the upload first, so that the client gets the answer rather than a broken pipe.
            async for _ in request.stream():
                pass
            response = fault.response()
            status = 0 if fault.reset else fault.status
        role = unverified_role(request)
        self.storage._record(RequestRecord(request.method, request.url.path, status, role, operation, bucket))
        return response

    async def _forward(self, request: Request, upstream: str, prefix: str) -> Response:
        base = self._upstreams[upstream]
        if base is None or self._http is None:
            return JSONResponse({"message": "name resolution failed"}, 503)  # Kong, with no upstream
        # The raw path and query: PostgREST's filters (`id=eq.1`) and Storage's object keys (spaces,
        # unicode, `+`) must arrive byte for byte, encoded as the client encoded them.
        url = base + request.scope["raw_path"].decode("latin-1").removeprefix(prefix)
        if query := request.scope["query_string"]:
            url += "?" + query.decode("latin-1")
        # Uncompressed from upstream, so the bytes passed back are the ones its headers describe.
        drop = HOP_BY_HOP | {"accept-encoding"}
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in drop]
        headers.append((b"accept-encoding", b"identity"))
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        outgoing = self._http.build_request(
            request.method, url, headers=headers, content=request.stream() if has_body else None
        )
        try:
            answer = await self._http.send(outgoing, stream=True)
        except httpx.TransportError:
            return JSONResponse({"message": "An invalid response was received from the upstream server"}, 502)
        response = StreamingResponse(
            answer.aiter_raw(), answer.status_code, background=BackgroundTask(answer.aclose)
        )
        # raw_headers keeps repeated headers (set-cookie, vary).
        response.raw_headers = [
            (k, v) for k, v in answer.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        return response


async def _no_route(scope: Scope, receive: Receive, send: Send) -> None:
    """Kong's answer when no route matches."""
    await JSONResponse({"message": "no Route matched with those values"}, 404)(scope, receive, send)
