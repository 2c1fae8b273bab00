"""`video-generator serve`: a job's progress over SSE, its status as JSON, and a page that fills in live.

Reads the configured store, so the flow and the server can be separate processes (or, with Supabase,
separate machines): new events are found by polling the store's log a few times a second. Replay is by id:
`Last-Event-ID` (sent by browsers on reconnect) or `?after=`.

Private objects are reached through links: the store's signed links, or, for the local store whose files
a browser cannot open, links to this server signed with a per-process secret.
"""

# No `from __future__ import annotations`: FastAPI reads these signatures at run time, and string annotations
# cannot name the dependencies defined inside create_app.
import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from clipgen.backends import close_quietly, open_store
from clipgen.settings import Settings
from clipgen.status import JobView, is_finished, job_view, linked_event_data
from clipgen.stores.base import BUCKETS, ClipStore

PAGE = Path(__file__).with_name("job_page.html")


def create_app(settings: Settings | None = None, *, poll_interval_s: float = 0.25) -> FastAPI:
    settings = settings or Settings()
    link_secret = secrets.token_bytes(32)
    stores: list[ClipStore] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stores.append(open_store(settings.store, settings))
        yield
        close_quietly(stores.pop())

    app = FastAPI(title="video-generator", lifespan=lifespan)

    def store() -> ClipStore:
        return stores[0]

    def authorized(
        authorization: Annotated[str | None, Header()] = None, token: Annotated[str | None, Query()] = None
    ) -> None:
        expected = settings.api_token.get_secret_value() if settings.api_token else None
        if expected is None:
            return
        given = token or (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):
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

    def resume_point(after: int | None = None, last_event_id: Annotated[str | None, Header()] = None) -> int:
        """Where a subscriber resumes. The header wins: a browser's own reconnect sends the last id it saw,
        while the URL keeps the `after` the page first opened with."""
        if last_event_id:
            try:
                return int(last_event_id)
            except ValueError:
                raise HTTPException(400, "Last-Event-ID must be an event id") from None
        return after or 0

    @app.exception_handler(HTTPException)
    async def json_errors(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/healthz", dependencies=guarded)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/jobs/{job_id}", dependencies=guarded)
    async def status(job_id: JobId, request: Request) -> JobView:
        return await run_in_threadpool(
            _view, store(), job_id, _linker(request, store(), link_secret, settings)
        )

    @app.get("/jobs/{job_id}/events", response_class=EventSourceResponse, dependencies=guarded)
    async def stream(
        job_id: Annotated[UUID, Depends(known_job)],
        since: Annotated[int, Depends(resume_point)],
        request: Request,
    ) -> AsyncIterator[ServerSentEvent]:
        if await run_in_threadpool(_seen_the_end, store(), job_id, since):
            return
        link = _linker(request, store(), link_secret, settings)
        while True:
            batch = await run_in_threadpool(store().events, job_id, since)
            for event in batch:
                data = await run_in_threadpool(_linked, store(), job_id, event.data, link)
                yield ServerSentEvent(id=str(event.id), event=event.event, data=data)
                since = event.id
            if is_finished(batch):
                return
            await asyncio.sleep(poll_interval_s)

    @app.get("/jobs/{job_id}/view", response_class=HTMLResponse, dependencies=guarded)
    async def view(job_id: JobId, token: str | None = None) -> str:
        config = json.dumps({"jobId": str(job_id), "token": token})
        return PAGE.read_text().replace("/*CONFIG*/null", config.replace("<", "\\u003c"))

    @app.get("/media/{bucket}/{path:path}")
    async def media(bucket: str, path: str, expires: int, sig: str) -> FileResponse:
        # Signed by this process (the link itself is the credential, as with Storage's signed links).
        if bucket not in BUCKETS or not hmac.compare_digest(sig, _sign(link_secret, bucket, path, expires)):
            raise HTTPException(403, "invalid link")
        if expires < time.time():
            raise HTTPException(403, "link expired")
        file = settings.data_dir / "storage" / bucket / path
        if ".." in Path(path).parts or not file.is_file():
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


def _linked(store: ClipStore, job_id: UUID, data: dict[str, Any], link: Any) -> dict[str, Any]:
    """Event data as a browser can use it: links signed now, like `/jobs/{id}`'s, never the store's paths."""
    if "video_url" not in data and "thumbnail_url" not in data:
        return data
    thumbnails = store.thumbnail_records(job_id) if "thumbnail_url" in data else []
    return linked_event_data(data, store.clip_records(job_id), thumbnails, link)


def _seen_the_end(store: ClipStore, job_id: UUID, since: int) -> bool:
    """The subscriber already has the job's final event: nothing will follow, so the stream closes at once."""
    log = store.events(job_id)
    return is_finished(log) and log[-1].id <= since


def _linker(request: Request, store: ClipStore, secret: bytes, settings: Settings) -> Any:
    def link(bucket: str, path: str) -> str:
        url = store.signed_url(bucket, path)
        if not url.startswith("file://"):
            return url
        # A browser on an http page cannot open file:// links: serve the object ourselves.
        expires = int(time.time()) + settings.signed_url_ttl_seconds
        sig = _sign(secret, bucket, path, expires)
        return str(
            request.url_for("media", bucket=bucket, path=path).include_query_params(expires=expires, sig=sig)
        )

    return link


def _sign(secret: bytes, bucket: str, path: str, expires: int) -> str:
    return hmac.new(secret, f"{bucket}/{path}:{expires}".encode(), hashlib.sha256).hexdigest()


class _RedactTokens(logging.Filter):
    """The page sends the API token as `?token=` (EventSource cannot send headers): keep it out of logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


_TOKEN = re.compile(r"((?:^|[?&])token=)[^&\s]*")


def serve(host: str, port: int) -> None:
    import uvicorn

    logging.getLogger("uvicorn.access").addFilter(_RedactTokens())
    uvicorn.run(create_app(), host=host, port=port, log_level="info")
