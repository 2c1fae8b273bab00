"""The Supabase store: clips, thumbnails and reference images in private Storage buckets, records in Postgres
(PostgREST).

Traps this module keeps clear of (docs/supabase.md, "Storage API traps"): the default upload content type
is text/plain, so it is always given; `upsert` must be the string "true"; private buckets are read through
signed links only (the store itself reads reference images back with the service key, as an authenticated
download). Uploads pass
the file's path, so storage3 streams it from disk instead of holding the clip in memory. The object path is
deterministic, so a retried upload overwrites rather than duplicates, and it is kept beside the signed link
so the link can be re-signed when it expires.

Retries: a small request (records, leases, reads, signs) goes through clipgen.retrying, which tries it again
in place only where nothing above retries it (serve, the CLI, the queue, the flow's own reads); inside a clip
attempt it is sent once and the clip task retries the attempt. An upload is sent once per call everywhere.
Budgets: tasks/__init__.py. Failures are StoreFailed or StoreRefused (clipgen.errors).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
from postgrest.exceptions import APIError
from pydantic import TypeAdapter
from storage3.exceptions import StorageApiError
from storage3.types import FileOptions

from clipgen.errors import (
    ConfigurationError,
    JobBusy,
    PermanentError,
    PublicBucket,
    StoreFailed,
    StoreRefused,
    is_retryable,
)
from clipgen.files import write_bytes
from clipgen.retrying import retried
from clipgen.settings import Settings
from clipgen.stores.base import (
    BUCKETS,
    ClipRecord,
    PredictionRecord,
    StoredEvent,
    StoredObject,
    ThumbnailRecord,
)
from clipgen.stores.queue import (
    DEFAULT_MAX_ATTEMPTS,
    JobStatus,
    QueuedJob,
    check_enqueue_args,
    check_lease,
)
from supabase import Client, ClientOptions, SupabaseException, create_client

log = logging.getLogger(__name__)
T = TypeVar("T")

# PostgREST connection failures (PGRST000-003) and SQLSTATE classes that clear by themselves:
# connection (08), rollback/serialization (40), insufficient resources (53), operator intervention (57).
_TRANSIENT_SQL = ("PGRST00", "08", "40", "53", "57")
# What enqueue_video_job raises for a job running under a live lease (20261121010000_video_jobs.sql).
_JOB_BUSY_SQLSTATE = "VJ001"
_FINISHED: TypeAdapter[JobStatus | None] = TypeAdapter(JobStatus | None)
# ClipRecord fields upsert_clip never writes (the lease functions own them).
_LEASE_FIELDS = ("lease_owner", "lease_expires_at")


class SupabaseStore:
    def __init__(self, client: Client, *, signed_url_ttl_s: int, http: httpx.Client | None = None) -> None:
        """`http` is the httpx client `client` was built on, if any; it is closed with the store."""
        self._client = client
        self._ttl_s = signed_url_ttl_s
        self._http = http
        self._buckets_ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SupabaseStore:
        if not settings.supabase_url or settings.supabase_service_role_key is None:
            raise ConfigurationError(
                "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY must be set for the supabase store"
            )
        http = httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        options = ClientOptions(
            httpx_client=http,
            postgrest_client_retry=False,  # our retries, bounded; the client's sleeps up to 30 s per call
            auto_refresh_token=False,
            persist_session=False,
        )
        key = settings.supabase_service_role_key.get_secret_value()
        try:
            client = create_client(settings.supabase_url, key, options)
        except SupabaseException as exc:  # e.g. a malformed URL: a configuration error like the ones above
            http.close()
            raise ConfigurationError(f"SUPABASE_URL / SUPABASE_SERVICE_ROLE_KEY: {exc}") from exc
        return cls(client, signed_url_ttl_s=settings.signed_url_ttl_seconds, http=http)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    # --- storage ----------------------------------------------------------------------------------------

    def put_object(self, bucket: str, path: str, source: Path, content_type: str) -> StoredObject:
        self._ensure_buckets()
        files = self._client.storage.from_(bucket)
        # A Path, not bytes: storage3 opens it and httpx streams it in chunks.
        options: FileOptions = {"content-type": content_type, "upsert": "true"}
        # Sent once, everywhere: the one large request; its retries are the clip task's (tasks/__init__.py).
        _once(f"upload {bucket}/{path}", lambda: files.upload(path, source, options))
        return StoredObject(bucket=bucket, path=path, url=self.signed_url(bucket, path))

    def signed_url(self, bucket: str, path: str) -> str:
        files = self._client.storage.from_(bucket)
        signed = _retry(f"sign {bucket}/{path}", lambda: files.create_signed_url(path, self._ttl_s))
        return str(signed["signedURL"])

    def has_object(self, bucket: str, path: str) -> bool:
        self._ensure_buckets()  # storage3's exists() raises, not False, for a missing bucket
        files = self._client.storage.from_(bucket)
        return bool(_retry(f"look up {bucket}/{path}", lambda: files.exists(path)))

    def read_object(self, bucket: str, path: str, dest: Path) -> None:
        files = self._client.storage.from_(bucket)
        try:
            # GET /object/{bucket}/{path} with the service key (private buckets); storage3 reads it whole,
            # which suits the images this is for (each at most references.MAX_IMAGE_BYTES).
            data = _retry(f"download {bucket}/{path}", lambda: files.download(path))
        except PermanentError as exc:
            cause = exc.__cause__
            if isinstance(cause, StorageApiError) and _status(cause) == 404:  # no such object or bucket
                raise FileNotFoundError(f"no object {path!r} in bucket {bucket!r}") from exc
            raise
        write_bytes(dest, data)  # atomic, as the local store's: a reader never sees half a file

    def _ensure_buckets(self) -> None:
        with self._lock:
            if self._buckets_ready:
                return
            for name in BUCKETS:
                if self._bucket_is_public(name):
                    raise PublicBucket(name)
            self._buckets_ready = True

    def _bucket_is_public(self, name: str) -> bool:
        """Whether the bucket is public, creating it private when it is missing."""
        storage = self._client.storage
        try:
            return bool(_retry(f"get bucket {name}", functools.partial(storage.get_bucket, name)).public)
        except PermanentError as exc:
            if not isinstance(exc.__cause__, StorageApiError) or _status(exc.__cause__) not in (400, 404):
                raise
        try:
            _retry(
                f"create bucket {name}",
                functools.partial(storage.create_bucket, name, options={"public": False}),
            )
            log.info("created private bucket %s", name)
        except PermanentError as exc:
            # Another process created it first: fine, as long as it is private.
            if not isinstance(exc.__cause__, StorageApiError) or _status(exc.__cause__) != 409:
                raise
            return self._bucket_is_public(name)
        return False

    # --- records -----------------------------------------------------------------------------------------

    def upsert_clip(self, record: ClipRecord) -> None:
        # The lease columns are left out, so the upsert neither sets nor clears them: only the lease calls do.
        exclude = {*_LEASE_FIELDS, *({"created_at"} if record.created_at is None else set())}
        row = _row(record, exclude=exclude)
        row["updated_at"] = datetime.now(UTC).isoformat()
        self._upsert("clips", row)

    def upsert_thumbnail(self, record: ThumbnailRecord) -> None:
        row = _row(record, exclude={"created_at"} if record.created_at is None else set())
        self._upsert("clip_thumbnails", row)

    def _upsert(self, table: str, row: dict[str, Any]) -> None:
        # default_to_null=False: a column left out takes its default on insert (created_at), kept on update.
        query = self._client.table(table).upsert(row, on_conflict="job_id,clip_index", default_to_null=False)
        _retry(f"upsert {table}", query.execute)

    def append_event(self, job_id: UUID, event: str, data: dict[str, Any]) -> int:
        # Through the migration's function, which makes ids commit in order (readers follow `id > last`).
        call = self._client.rpc(
            "append_job_event", {"p_job_id": str(job_id), "p_event": event, "p_data": data}
        )
        return int(_retry("append event", call.execute).data)  # type: ignore[arg-type]

    def events(self, job_id: UUID, after: int = 0) -> list[StoredEvent]:
        table = self._client.table("job_events")
        query = table.select("*").eq("job_id", str(job_id)).gt("id", after).order("id")
        return [StoredEvent.model_validate(row) for row in _retry("read events", query.execute).data]

    def clip_records(self, job_id: UUID) -> list[ClipRecord]:
        query = self._client.table("clips").select("*").eq("job_id", str(job_id)).order("clip_index")
        return [ClipRecord.model_validate(row) for row in _retry("read clips", query.execute).data]

    def thumbnail_records(self, job_id: UUID) -> list[ThumbnailRecord]:
        table = self._client.table("clip_thumbnails")
        query = table.select("*").eq("job_id", str(job_id)).order("clip_index")
        return [ThumbnailRecord.model_validate(row) for row in _retry("read thumbnails", query.execute).data]

    def record_prediction(self, record: PredictionRecord) -> None:
        row = _row(record, exclude={"created_at"} if record.created_at is None else set())
        row["updated_at"] = datetime.now(UTC).isoformat()
        table = self._client.table("clip_predictions")
        query = table.upsert(row, on_conflict="prediction_id", default_to_null=False)
        _retry("record prediction", query.execute)

    def predictions(self, job_id: UUID) -> list[PredictionRecord]:
        table = self._client.table("clip_predictions")
        query = table.select("*").eq("job_id", str(job_id)).order("id")
        return [
            PredictionRecord.model_validate(row) for row in _retry("read predictions", query.execute).data
        ]

    # --- paid work, through the functions of 20261202000000_paid_work.sql -----------------------------------
    # Each is one statement or one transaction in the database, with the database's clock. A retry after a
    # lost response may repeat a call that did commit: a repeated reservation finds its row and answers True
    # again, a repeated resolve finds the prediction recorded, and a repeated take or renew finds the lease
    # already the owner's (renewed once more). A repeated release is a no-op.

    def reserve_prediction(self, record: PredictionRecord, budget_usd: float | None) -> bool:
        params = {"p_record": _row(record, exclude=set()), "p_budget_usd": budget_usd}
        call = self._client.rpc("reserve_prediction", params)
        return _retry(f"reserve {record.prediction_id}", call.execute).data is True

    def resolve_intent(self, intent_id: str, record: PredictionRecord) -> None:
        params = {"p_intent_id": intent_id, "p_record": _row(record, exclude=set())}
        call = self._client.rpc("resolve_prediction_intent", params)
        _retry(f"resolve {intent_id} as {record.prediction_id}", call.execute)

    def take_clip_lease(self, job_id: UUID, clip_index: int, owner: str, seconds: float, model: str) -> bool:
        check_lease(seconds)
        params = {**_lease_params(job_id, clip_index, owner), "p_seconds": seconds, "p_model": model}
        call = self._client.rpc("take_clip_lease", params)
        return _retry(f"take lease on clip {clip_index} of {job_id}", call.execute).data is True

    def renew_clip_lease(self, job_id: UUID, clip_index: int, owner: str, seconds: float) -> bool:
        check_lease(seconds)
        params = {**_lease_params(job_id, clip_index, owner), "p_seconds": seconds}
        call = self._client.rpc("renew_clip_lease", params)
        return _retry(f"renew lease on clip {clip_index} of {job_id}", call.execute).data is True

    def release_clip_lease(self, job_id: UUID, clip_index: int, owner: str) -> None:
        call = self._client.rpc("release_clip_lease", _lease_params(job_id, clip_index, owner))
        _retry(f"release lease on clip {clip_index} of {job_id}", call.execute)

    # --- job queue (clipgen/stores/queue.py), through the functions of 20261121010000_video_jobs.sql -------
    # Times are the database's (now()), so workers on machines with skewed clocks still agree on leases.
    # A retry after a lost response can repeat a call that did commit: a repeated claim takes a second job
    # (the first comes back when its lease expires), a repeated renew is harmless, and a repeated finish
    # answers None (the first one already ended the claim).

    def enqueue_job(
        self,
        job_id: UUID,
        job: dict[str, Any],
        options: dict[str, Any] | None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> QueuedJob:
        check_enqueue_args(max_attempts)
        params = {"p_job_id": str(job_id), "p_job": job, "p_options": options, "p_max_attempts": max_attempts}
        call = self._client.rpc("enqueue_video_job", params)

        def enqueue() -> Any:
            try:
                return call.execute()
            except APIError as exc:
                if exc.code == _JOB_BUSY_SQLSTATE:  # not a failure of the store: raised past _retry
                    raise JobBusy(str(exc.message)) from exc
                raise

        [row] = _rows(_retry(f"enqueue job {job_id}", enqueue).data)
        return QueuedJob.model_validate(row)

    def claim_job(self, worker: str, lease_seconds: float) -> QueuedJob | None:
        check_lease(lease_seconds)
        call = self._client.rpc("claim_video_job", {"p_worker": worker, "p_lease_seconds": lease_seconds})
        rows = _rows(_retry("claim a job", call.execute).data)
        return QueuedJob.model_validate(rows[0]) if rows else None

    def renew_claim(self, job_id: UUID, claim_token: UUID, lease_seconds: float) -> bool:
        check_lease(lease_seconds)
        params = {"p_job_id": str(job_id), "p_token": str(claim_token), "p_lease_seconds": lease_seconds}
        call = self._client.rpc("renew_video_job", params)
        return _retry(f"renew claim on job {job_id}", call.execute).data is True

    def finish_job(
        self,
        job_id: UUID,
        claim_token: UUID,
        *,
        succeeded: bool,
        error: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> JobStatus | None:
        params = {
            "p_job_id": str(job_id),
            "p_token": str(claim_token),
            "p_succeeded": succeeded,
            "p_error": error,
            "p_retry_after_seconds": retry_after_seconds,
        }
        call = self._client.rpc("finish_video_job", params)
        return _FINISHED.validate_python(_retry(f"finish job {job_id}", call.execute).data)

    def queued_job(self, job_id: UUID) -> QueuedJob | None:
        query = self._client.table("video_jobs").select("*").eq("job_id", str(job_id))
        rows = _rows(_retry(f"read job {job_id}", query.execute).data)
        return QueuedJob.model_validate(rows[0]) if rows else None


def _lease_params(job_id: UUID, clip_index: int, owner: str) -> dict[str, Any]:
    return {"p_job_id": str(job_id), "p_clip_index": clip_index, "p_owner": owner}


def _rows(data: Any) -> list[dict[str, Any]]:
    """A set-returning call's rows (PostgREST answers a `returns setof` function with a JSON array)."""
    if not isinstance(data, list):
        raise StoreRefused(f"expected a list of rows from PostgREST, got {type(data).__name__}")
    return data


def _row(record: ClipRecord | ThumbnailRecord | PredictionRecord, exclude: set[str]) -> dict[str, Any]:
    return record.model_dump(mode="json", exclude=exclude)


def _retry(what: str, call: Callable[[], T]) -> T:
    """A small idempotent request, tried again in place while it fails in a way that may pass (429, 5xx, a
    reset), unless a retry above stands in for it (a clip attempt's task, a ledger write's tries): then
    sent once. What is not served is StoreFailed, which the clip task may retry with its attempt."""
    return retried(what, lambda: _once(what, call), retry_on=is_retryable)


def _once(what: str, call: Callable[[], T]) -> T:
    """One request, its failure typed: StoreFailed (may pass) or StoreRefused (will not)."""
    try:
        return call()
    except (StorageApiError, APIError, httpx.TransportError) as exc:
        raise _classify(what, exc) from exc


def _classify(what: str, exc: Exception) -> StoreFailed | StoreRefused:
    if isinstance(exc, StorageApiError):
        return _storage_error(what, exc)
    if isinstance(exc, APIError):
        return _table_error(what, exc)
    return StoreFailed(f"{what}: Supabase unreachable ({exc!r})")


def _status(exc: StorageApiError) -> int:
    try:
        return int(exc.status)
    except (TypeError, ValueError):
        return 0


def _storage_error(what: str, exc: StorageApiError) -> StoreFailed | StoreRefused:
    status = _status(exc)
    message = f"{what}: Supabase Storage {status or exc.status} {exc.code}: {exc.message}"
    if status == 429 or status >= 500 or status == 0:
        return StoreFailed(message)
    return StoreRefused(message)


def _table_error(what: str, exc: APIError) -> StoreFailed | StoreRefused:
    message = f"{what}: Supabase {exc.code}: {exc.message}"
    if exc.code is None or exc.code.startswith(_TRANSIENT_SQL):
        return StoreFailed(message)
    return StoreRefused(message)
