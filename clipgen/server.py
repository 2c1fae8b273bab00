"""`video-generator serve`: a job's progress over SSE, its status as JSON, and a page that fills in live.

Reads the configured store, so the flow and the server can be separate processes (or, with Supabase,
separate machines): new events are found by polling the store's log a few times a second. Replay is by id:
`Last-Event-ID` (sent by browsers on reconnect) or `?after=`.

Private objects are reached through links: the store's signed links, or, for the local store whose files
a browser cannot open, links to this server signed with the store's key (clipgen/link_key.py). Links start
with VIDEO_GENERATOR_PUBLIC_URL; without it, with the request's own address only when both ends are loopback
(a `Host` header is the client's word), and otherwise they are relative to this server.
"""

# No `from __future__ import annotations`: FastAPI reads these signatures at run time, and string annotations
# cannot name the dependencies defined inside create_app.
import asyncio
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode
from uuid import UUID

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipgen.backends import close_quietly, open_store
from clipgen.http_safety import SecurityHeaders, install_log_redaction, origin, page_csp
from clipgen.link_key import link_key
from clipgen.settings import Settings
from clipgen.status import JobView, is_finished, job_view, linked_event_data
from clipgen.stores.base import BUCKETS, ClipStore, LocalObjects

PAGE = Path(__file__).with_name("job_page.html")
MAX_EVENT_ID = 2**63 - 1  # SQLite's and PostgreSQL's bigint: a larger id is refused, not passed on


def create_app(settings: Settings | None = None, *, poll_interval_s: float = 0.25) -> FastAPI:
    settings = settings or Settings()
    if settings.api_token is not None and not settings.api_token.get_secret_value():
        raise ValueError("VIDEO_GENERATOR_API_TOKEN is empty: set a token, or unset it to serve without one")
    key = cache(lambda: link_key(settings.data_dir))  # made when a local link is first signed or checked
    stores: list[ClipStore] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stores.append(open_store(settings.store, settings))
        yield
        close_quietly(stores.pop())

    # No interactive docs or schema: they would be the only unauthenticated routes besides signed media, and
    # Swagger's CDN script does not fit the CSP. docs/watching.md lists the routes.
    app = FastAPI(title="video-generator", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)

    def store() -> ClipStore:
        return stores[0]

    def authorized(
        authorization: Annotated[str | None, Header()] = None, token: Annotated[str | None, Query()] = None
    ) -> None:
        expected = settings.api_token.get_secret_value() if settings.api_token else None
        if expected is None:
            return
        given = token or (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):  # bytes: any text compares
            raise HTTPException(401, "a valid token is required (Authorization: Bearer, or ?token=)")

    guarded = [Depends(authorized)]

    def job_uuid(job_id: str) -> UUID:
        """The job id of the path; a malformed one is an unknown job (404), not a malformed request."""
        try:
            return UUID(job_id)
        except ValueError:
            raise HTTPException(404, "unknown job: job ids are UUIDs") from None

    JobId = Annotated[UUID, Depends(job_uuid)]

    async def known_job(job_id: JobId) -> UUID:
        # Checked before the stream starts: once an event stream has begun, it can no longer answer 404.
        if not await run_in_threadpool(store().events, job_id):
            raise HTTPException(404, f"unknown job {job_id}")
        return job_id

    def resume_point(
        after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> int:
        """Where a subscriber resumes. The header wins: a browser's own reconnect sends the last id it saw,
        while the URL keeps the `after` the page first opened with."""
        if last_event_id:
            try:
                since = int(last_event_id)
            except ValueError:
                since = -1
            if not 0 <= since <= MAX_EVENT_ID:
                raise HTTPException(400, "Last-Event-ID must be an event id") from None
            return since
        return after or 0

    @app.exception_handler(StarletteHTTPException)  # the router's own 404 and 405 too
    async def json_errors(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Named, not echoed: the value may be a mistyped secret.
        where = sorted({".".join(str(p) for p in error["loc"]) for error in exc.errors()})
        return JSONResponse({"error": f"invalid request: {', '.join(where)}"}, status_code=422)

    @app.get("/healthz", dependencies=guarded)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/jobs/{job_id}", dependencies=guarded)
    async def status(job_id: JobId, request: Request) -> JobView:
        return await run_in_threadpool(_view, store(), job_id, _linker(request, store(), key, settings))

    @app.get("/jobs/{job_id}/events", response_class=EventSourceResponse, dependencies=guarded)
    async def stream(
        job_id: Annotated[UUID, Depends(known_job)],
        since: Annotated[int, Depends(resume_point)],
        request: Request,
    ) -> AsyncIterator[ServerSentEvent]:
        if await run_in_threadpool(_seen_the_end, store(), job_id, since):
            return
        link = _linker(request, store(), key, settings)
        while True:
            batch = await run_in_threadpool(store().events, job_id, since)
            linked = await run_in_threadpool(_linked, store(), job_id, [e.data for e in batch], link)
            for event, data in zip(batch, linked, strict=True):
                yield ServerSentEvent(id=str(event.id), event=event.event, data=data)
                since = event.id
            if is_finished(batch):
                return
            await asyncio.sleep(poll_interval_s)

    link_origins = origin(settings.public_url) + origin(settings.supabase_url)

    @app.get("/jobs/{job_id}/view", response_class=HTMLResponse, dependencies=guarded)
    async def view(job_id: JobId, token: str | None = None) -> HTMLResponse:
        config = json.dumps({"jobId": str(job_id), "token": token})
        nonce = secrets.token_urlsafe(16)
        page = PAGE.read_text().replace("/*CONFIG*/null", config.replace("<", "\\u003c"))
        page = page.replace("__NONCE__", nonce)
        return HTMLResponse(page, headers={"content-security-policy": page_csp(nonce, link_origins)})

    @app.get("/media/{bucket}/{path:path}")
    async def media(bucket: str, path: str, expires: int, sig: str) -> FileResponse:
        # Signed with the store's key (the link itself is the credential, as with Storage's signed links).
        expected = _sign(key(), bucket, path, expires)
        if bucket not in BUCKETS or not hmac.compare_digest(sig.encode(), expected.encode()):
            raise HTTPException(403, "invalid link")
        if expires < time.time():
            raise HTTPException(403, "link expired")
        file = await run_in_threadpool(_object_file, store(), bucket, path)
        if file is None:
            raise HTTPException(404, "no such object")
        return FileResponse(file)

    return app


def _view(store: ClipStore, job_id: UUID, link: Any) -> JobView:
    found = job_view(
        job_id, store.events(job_id), store.clip_records(job_id), store.thumbnail_records(job_id), link
    )
    if found is None:
        raise HTTPException(404, f"unknown job {job_id}")
    return found


def _linked(store: ClipStore, job_id: UUID, batch: list[dict[str, Any]], link: Any) -> list[dict[str, Any]]:
    """A batch of event data as a browser can use it: links signed now, like `/jobs/{id}`'s, never the
    store's paths. The records are read once per batch, and only when some event carries a link."""
    if not any("video_url" in data or "thumbnail_url" in data for data in batch):
        return batch
    records, thumbnails = store.clip_records(job_id), store.thumbnail_records(job_id)
    return [linked_event_data(data, records, thumbnails, link) for data in batch]


def _seen_the_end(store: ClipStore, job_id: UUID, since: int) -> bool:
    """The subscriber already has the job's final event: nothing will follow, so the stream closes at once."""
    log = store.events(job_id)
    return is_finished(log) and log[-1].id <= since


def _object_file(store: ClipStore, bucket: str, path: str) -> Path | None:
    """The local file of a stored object, as its store finds it; None for a store of remote objects."""
    return store.object_file(bucket, path) if isinstance(store, LocalObjects) else None


def _linker(request: Request, store: ClipStore, key: Callable[[], bytes], settings: Settings) -> Any:
    base = _link_base(request, settings)

    def link(bucket: str, path: str) -> str:
        url = store.signed_url(bucket, path)
        if not url.startswith("file://"):
            return url
        # A browser on an http page cannot open file:// links: serve the object ourselves.
        expires = int(time.time()) + settings.signed_url_ttl_seconds
        query = urlencode({"expires": expires, "sig": _sign(key(), bucket, path, expires)})
        return f"{base}/media/{quote(bucket)}/{quote(path)}?{query}"

    return link


def _link_base(request: Request, settings: Settings) -> str:
    """Where links point: the configured public URL; the request's own address when client and `Host` are
    both loopback (a local setup); otherwise nothing, so links are relative to whatever the client reached."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    client = request.client.host if request.client else ""
    if _is_loopback(client) and _is_loopback(request.url.hostname or ""):
        return str(request.base_url).rstrip("/")
    return ""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def _sign(secret: bytes, bucket: str, path: str, expires: int) -> str:
    return hmac.new(secret, f"{bucket}/{path}:{expires}".encode(), hashlib.sha256).hexdigest()


def serve(host: str, port: int) -> None:
    import uvicorn

    install_log_redaction()
    uvicorn.run(create_app(), host=host, port=port, log_level="info")
