"""The HTTP API: Replicate's routes as the official client calls them (predictions, models, files) and
outputs; the control routes under /_fake are in `admin.py`."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

# File uploads (`request.form()`) need python-multipart, which comes with the `staging` extra only. Imported
# here so a missing one fails when the fake is imported (the CLI then says to install the extra), not as an
# assertion inside starlette at the first upload.
import python_multipart  # noqa: F401
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from staging.fake_replicate.admin import add_admin_routes
from staging.fake_replicate.answers import NOT_FOUND, ApiError, found, invalid, read_json_object
from staging.fake_replicate.faults import Fault
from staging.fake_replicate.files import FileTooLarge
from staging.fake_replicate.openapi import model_json, version_json
from staging.fake_replicate.schemas import ModelSchema
from staging.fake_replicate.state import FakeState
from staging.fake_replicate.validation import InvalidField, unknown_field, validate_input
from staging.serving import DropConnection

MODEL_NOT_FOUND = "Not found."  # what GET /v1/models/{owner}/{name} says of an unknown model
_BODY_FIELDS = frozenset({"input", "webhook", "webhook_completed", "webhook_events_filter", "stream"})


def create_app(state: FakeState) -> FastAPI:
    app = FastAPI(title="Fake Replicate API", openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = NOT_FOUND if exc.status_code == 404 else str(exc.detail)
        return ApiError(exc.status_code, detail).response()

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(422, str(exc.errors()), "Invalid request").response()

    def authorize(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() not in ("bearer", "token") or not token or state.token not in (None, token):
            raise ApiError(401, "Invalid token.", "Unauthenticated")

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    # --- predictions ------------------------------------------------------------------------------------

    async def create(request: Request, model: str | None) -> Response:
        arrived = time.monotonic()
        try:
            authorize(request)
            body = await read_json_object(request)
            values = body.get("input")
            prompt = str(values.get("prompt", "")) if isinstance(values, dict) else ""
            fault = state.faults.take_create_fault(prompt)
            if fault is not None and fault.kind == "connection_reset":
                state.counts.record_reset()
                state.counts.log_create(arrived, 0)
                return DropConnection()
            if fault is not None and fault.kind != "reset_after_create":
                raise _fault_error(fault)
            schema = _schema_for(state, body, model)
            problems = _body_problems(body, with_version=model is None)
            if isinstance(values, dict):
                problems += validate_input(schema, values)
            if problems:
                raise invalid(problems)
            cancel_after = _cancel_after(request.headers.get("cancel-after"))
        except ApiError as exc:
            state.counts.reject(exc.status)
            state.counts.log_create(arrived, exc.status)
            raise
        assert isinstance(values, dict)
        prediction = state.create(schema, values, base_url(request), cancel_after_s=cancel_after)
        if fault is not None:  # reset_after_create: made (and billed), but the answer never arrives
            state.counts.record_reset()
            state.counts.log_create(arrived, 0)
            return DropConnection()
        wait = _prefer_wait(request.headers.get("prefer", ""))
        deadline = time.monotonic() + wait
        while wait and not state.is_terminal(prediction["id"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if wait:
            prediction = state.get(prediction["id"]) or prediction
        state.counts.log_create(arrived, 201)
        return JSONResponse(prediction, 201)

    @app.post("/v1/models/{owner}/{name}/predictions")
    async def create_for_model(owner: str, name: str, request: Request) -> Response:
        return await create(request, f"{owner}/{name}")

    @app.post("/v1/predictions")
    async def create_for_version(request: Request) -> Response:
        return await create(request, None)

    @app.get("/v1/predictions")
    async def list_predictions(
        request: Request,
        cursor: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
    ) -> dict[str, Any]:
        # Replicate's cursor is opaque and `next` is the whole URL of the next page; ours names the last id
        # and carries the window along.
        authorize(request)
        fault = state.faults.take_list_fault()
        if fault is not None:
            raise _fault_error(fault)
        window = {"created_after": created_after, "created_before": created_before}
        results, last = state.list_predictions(
            after=cursor, created_after=_epoch(created_after), created_before=_epoch(created_before)
        )
        query = urlencode({"cursor": last, **{k: v for k, v in window.items() if v is not None}})
        following = f"{base_url(request)}/v1/predictions?{query}" if last else None
        return {"next": following, "previous": None, "results": results}

    @app.get("/v1/predictions/{prediction_id}")
    async def get_prediction(prediction_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        return found(state.get(prediction_id))

    @app.post("/v1/predictions/{prediction_id}/cancel")
    async def cancel_prediction(prediction_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        return found(state.cancel(prediction_id))

    @app.api_route("/_fake/outputs/{name}", methods=["GET", "HEAD"])
    async def output(name: str, request: Request) -> Response:
        # Delivery URLs are signed links on Replicate: no token needed.
        prediction_id, download = name.removesuffix(".mp4"), request.method == "GET"
        answer = state.open_output(prediction_id, count=download)
        if answer.hold_s:
            await asyncio.sleep(answer.hold_s)
        if answer.status == 404:
            raise ApiError(404, NOT_FOUND)
        if answer.path is None:
            raise ApiError(answer.status, "Internal Server Error")
        if not download:
            return FileResponse(answer.path, media_type="video/mp4")
        return _Delivery(answer.path, lambda: state.output_sent(prediction_id))

    # --- models -----------------------------------------------------------------------------------------

    def read_model(request: Request, model: str) -> ModelSchema:
        authorize(request)
        fault = state.faults.take_model_fault(model)
        if fault is not None:
            raise _fault_error(fault)
        schema = state.schemas.by_model(model)
        if schema is None:
            raise ApiError(404, MODEL_NOT_FOUND)
        return schema

    @app.get("/v1/models/{owner}/{name}")
    async def get_model(owner: str, name: str, request: Request) -> dict[str, Any]:
        return model_json(read_model(request, f"{owner}/{name}"))

    @app.get("/v1/models/{owner}/{name}/versions/{version_id}")
    async def get_version(owner: str, name: str, version_id: str, request: Request) -> dict[str, Any]:
        # Only the latest version is known: the fake serves one schema per model.
        schema = read_model(request, f"{owner}/{name}")
        if schema.version != version_id:
            raise ApiError(404, MODEL_NOT_FOUND)
        return version_json(schema)

    # --- files ------------------------------------------------------------------------------------------

    @app.post("/v1/files")
    async def upload(request: Request) -> Response:
        authorize(request)
        # Refuse an oversized upload before reading it (the multipart framing adds a little).
        if int(request.headers.get("content-length") or 0) > state.files.max_bytes + (1 << 20):
            raise ApiError(413, state.files.too_large())
        async with request.form(max_files=1, max_fields=10) as form:
            content = form.get("content")
            if not isinstance(content, UploadFile):
                raise invalid([InvalidField("required", "", "content is required")])
            name = str(form.get("filename") or content.filename or "file")
            content_type = str(form.get("type") or content.content_type or "application/octet-stream")
            metadata = _metadata(form.get("metadata"))
            try:
                stored = await run_in_threadpool(state.files.add, content.file, name, content_type, metadata)
            except FileTooLarge as exc:
                raise ApiError(413, str(exc)) from exc
        return JSONResponse(stored.as_json(base_url(request)), 201)

    @app.get("/v1/files")
    async def list_files(request: Request) -> dict[str, Any]:
        authorize(request)
        results = [stored.as_json(base_url(request)) for stored in state.files.all()]
        return {"next": None, "previous": None, "results": results}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        stored = state.files.get(file_id)
        if stored is None:
            raise ApiError(404, "File not found")
        return stored.as_json(base_url(request))

    @app.get("/v1/files/{file_id}/download")
    async def download_file(file_id: str) -> Response:
        # Replicate signs download links (owner, expiry, signature) instead of asking for a token.
        stored = state.files.get(file_id)
        if stored is None or not stored.path.exists():
            raise ApiError(404, "File not found")
        return FileResponse(stored.path, media_type=stored.content_type)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request) -> Response:
        authorize(request)
        if not state.files.delete(file_id):
            raise ApiError(404, "File not found")
        return Response(status_code=204)

    add_admin_routes(app, state)
    return app


class _Delivery(FileResponse):
    """An output file whose download is noted as finished just before its last bytes go out: nothing the
    client does after reading them can come before that note on the timeline."""

    def __init__(self, path: Path, on_last_bytes: Callable[[], None]) -> None:
        super().__init__(path, media_type="video/mp4")
        self._on_last_bytes = on_last_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._on_last_bytes()
            await send(message)

        await super().__call__(scope, receive, sending)


def _schema_for(state: FakeState, body: dict[str, Any], model: str | None) -> ModelSchema:
    if model is not None:
        schema = state.schemas.by_model(model)
        if schema is None or not schema.official:
            raise ApiError(404, NOT_FOUND)
        return schema
    version = body.get("version")
    if not isinstance(version, str) or not version:
        raise invalid([InvalidField("required", "", "version is required")])
    schema = state.schemas.by_version(version)
    if schema is None:
        detail = "The specified version does not exist (or perhaps you don't have permission to use it?)"
        raise ApiError(422, f"{detail}: {version}", "Invalid version or not permitted")
    return schema


def _body_problems(body: dict[str, Any], *, with_version: bool) -> list[InvalidField]:
    allowed = _BODY_FIELDS | {"version"} if with_version else _BODY_FIELDS
    problems = [unknown_field("", key) for key in body if key not in allowed]
    if "input" not in body:
        problems.insert(0, InvalidField("required", "", "input is required"))
    elif not isinstance(body["input"], dict):
        problems.append(InvalidField("invalid_type", "input", "Invalid type. Expected: object"))
    return problems


def _fault_error(fault: Fault) -> ApiError:
    if fault.kind == "rate_limit":
        seconds = max(1, math.ceil(fault.seconds))
        detail = f"Request was throttled. Your rate limit resets in ~{seconds}s."
        return ApiError(429, detail, "Too Many Requests", headers={"Retry-After": str(seconds)})
    return ApiError(fault.status, HTTPStatus(fault.status).phrase)


def _prefer_wait(header: str) -> float:
    """Seconds to hold a create open: `Prefer: wait` is 60, `wait=N` is N (1-60); anything else 0."""
    match = re.fullmatch(r"\s*wait(?:\s*=\s*(\d+))?\s*", header)
    if not match:
        return 0.0
    return float(min(60, max(1, int(match[1] or 60))))


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")
MIN_CANCEL_AFTER_S = 5.0


def _cancel_after(header: str | None) -> float | None:
    """Seconds from a `Cancel-After` header: "30s", "5m", "1h30m45s", or a bare number of seconds; at
    least 5 s, as the API documents. What Replicate answers to a bad value is not documented: 400 here."""
    if header is None:
        return None
    match = _DURATION.fullmatch(header.strip())
    if not match or not any(match.groups()):
        raise ApiError(400, f"Invalid Cancel-After duration: {header!r}", "Bad request")
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < MIN_CANCEL_AFTER_S:
        raise ApiError(400, f"Cancel-After must be at least 5s, not {header!r}", "Bad request")
    return total


def _metadata(raw: object) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        metadata = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise invalid([InvalidField("invalid_type", "metadata", "Invalid type. Expected: object")])
    return metadata


def _epoch(value: str | None) -> float | None:
    """A date-time query parameter (ISO 8601, `Z` allowed) as epoch seconds; 400 when it is not one."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(400, f"not a date-time: {value!r}", "Bad request") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
