"""A fake of the Supabase Storage API, as `storage3` (supabase-py's storage client) calls it.

Serve it behind one base URL with PostgREST through `tests.stack.gateway.SupabaseGateway` (importable from
here too); `FakeStorage.app` is the ASGI app for `{base}/storage/v1`. It answers like supabase/storage
(checked against its routes, `ERRORS` table, error handler and tests):

- Errors are `{"statusCode": "<status>", "code": "<ErrorCode>", "error": "<name>", "message": "..."}` with
  HTTP status **400** whatever the body's statusCode (500 stays 500): Storage's error handler answers with
  `userStatusCode`, which is 400 for everything it renders except a 500. storage3 raises `StorageApiError`
  with `.status` = the body's statusCode (a str, e.g. "404"), `.code` = the body's `error` (e.g. "not_found",
  "Duplicate"), `.message`. Object not found: 404/not_found/"Object not found"; bucket: 404/"Bucket not
  found"; duplicates: 409/Duplicate/"The resource already exists"; bad key: 403/Unauthorized/<jose message>;
  bad signed-URL token: 400/InvalidJWT/<jose message>, e.g. '"exp" claim timestamp check failed' (current
  Storage verifies with `jose`; the old "jwt expired" came from `jsonwebtoken`).
- Keys are HS256 JWTs (`make_key`), read from `Authorization: Bearer` and, as Supabase's gateway does, from
  `apikey` when there is no Authorization. Role `service_role` bypasses RLS. Every other role is treated as
  a project with private buckets and **no storage policies**, so RLS hides every row: listing buckets or
  objects gives `[]`, reading, signing or deleting a bucket/object gives 404 not found, creating a bucket
  or uploading gives 403 "new row violates row-level security policy" (all with HTTP 400, as above).
- Uploads (multipart field `file`, or a raw body) stream to files in a temporary directory: Starlette's form
  parser spools each file part to disk past 1 MiB, and the fake copies it into the store while hashing.
  The stored content type is the multipart part's own Content-Type (or a `contentType` form field, as
  Storage allows); `cacheControl` becomes `max-age=<n>`. POST overwrites only with `x-upsert: true`;
  PUT (update) always does. Bucket `file_size_limit` / `allowed_mime_types` are enforced.
- Signed URLs are `/object/sign/{bucket}/{path}?token=<JWT {url, scope: "download", iat, exp}>` signed
  with the JWT secret, and download with no key. `empty_bucket` empties at once (Storage queues it).

Faults (`fail_next`) fire before authentication, as an outage in front of Storage would, and answer with
their own HTTP status. Every request is recorded (`requests`) with the role it authenticated as (None when
it carried no valid key or needed none) and status 0 when its connection was reset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, Literal

import jwt
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from clipgen.serving import DropConnection

__all__ = [
    "Bucket",
    "FakeStorage",
    "Operation",
    "RequestRecord",
    "StorageError",
    "StoredObject",
    "make_key",
]

SERVICE_ROLE = "service_role"
RLS_DENIED = "new row violates row-level security policy"
CHUNK = 1024 * 1024
Operation = Literal["upload", "sign", "download", "info", "list", "remove", "bucket", "any"]


def make_key(jwt_secret: str, role: str, *, ttl_s: int = 10 * 365 * 24 * 3600) -> str:
    """An API key like Supabase's anon / service_role keys: an HS256 JWT `{"role", "iss", "iat", "exp"}`."""
    _check_secret(jwt_secret)
    now = int(time.time())
    claims = {"role": role, "iss": "supabase", "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, jwt_secret, algorithm="HS256")


def _check_secret(secret: str) -> None:
    # Supabase wants at least 32 characters, and PyJWT warns (an error under pytest here) on shorter keys.
    if len(secret.encode()) < 32:
        raise ValueError("the JWT secret must be at least 32 bytes long, as Supabase requires")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StorageError(Exception):
    """An error rendered as Storage renders its `StorageBackendError`s."""

    def __init__(
        self, status: int, code: str, message: str, *, error: str | None = None, http: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.error = status, code, message, error or code
        self.http_status = http or (500 if status == 500 else 400)

    def response(self) -> Response:
        body = {"statusCode": str(self.status), "code": self.code, "error": self.error}
        return JSONResponse(body | {"message": self.message}, self.http_status)


def _no_such_bucket() -> StorageError:
    return StorageError(404, "NoSuchBucket", "Bucket not found", error="Bucket not found")


def _no_such_key() -> StorageError:
    return StorageError(404, "NoSuchKey", "Object not found", error="not_found")


def _duplicate(code: str) -> StorageError:
    return StorageError(409, code, "The resource already exists", error="Duplicate")


def _access_denied(message: str) -> StorageError:
    return StorageError(403, "AccessDenied", message, error="Unauthorized")


def _invalid(message: str) -> StorageError:
    return StorageError(400, "InvalidRequest", message, error="Bad Request")


def _jose_message(exc: jwt.PyJWTError) -> str:
    """What `jose` (which Storage verifies with) says, for PyJWT's equivalent failure."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return '"exp" claim timestamp check failed'
    if isinstance(exc, jwt.InvalidSignatureError):  # before DecodeError: it is a subclass
        return "signature verification failed"
    if isinstance(exc, jwt.DecodeError):
        return "Invalid Compact JWS"
    return str(exc)


class _Record:
    """Attribute or item access (`obj.sha256`, `obj["sha256"]`), for assertions written either way."""

    def __getitem__(self, name: str) -> Any:
        if name not in {f.name for f in dataclasses.fields(self)}:  # type: ignore[arg-type]
            raise KeyError(name)
        return getattr(self, name)


@dataclass
class Bucket(_Record):
    id: str
    name: str
    public: bool = False
    file_size_limit: int | None = None
    allowed_mime_types: list[str] | None = None
    # storage3's BaseBucket wants a str; Storage sends "" for buckets made with the service key.
    owner: str = ""
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"type": "STANDARD"}


@dataclass
class StoredObject(_Record):
    bucket: str
    path: str
    size: int
    content_type: str
    sha256: str
    cache_control: str
    upsert: bool  # whether the write that made this version asked to overwrite
    writes: int  # successful writes to this key so far, including ones before a removal
    id: str
    user_metadata: dict[str, Any] | None
    created_at: str
    updated_at: str
    file: Path = field(repr=False)

    def metadata(self) -> dict[str, Any]:
        """The `metadata` column Storage keeps and lists."""
        return {
            "eTag": f'"{self.sha256[:32]}"',
            "size": self.size,
            "mimetype": self.content_type,
            "cacheControl": self.cache_control,
            "lastModified": self.updated_at,
            "contentLength": self.size,
            "httpStatusCode": 200,
        }

    def row(self) -> dict[str, Any]:
        return {
            "bucket_id": self.bucket,
            "name": self.path,
            "id": self.id,
            "owner": None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_accessed_at": self.updated_at,
            "metadata": self.metadata(),
            "user_metadata": self.user_metadata,
        }


@dataclass(frozen=True)
class RequestRecord(_Record):
    method: str
    path: str
    status: int  # 0: the connection was reset instead
    role: str | None
    operation: Operation
    bucket: str | None


@dataclass
class _Fault:
    remaining: int
    status: int
    bucket: str | None
    operation: Operation
    reset: bool

    def response(self) -> Response:
        if self.reset:
            return DropConnection()
        phrase = HTTPStatus(self.status).phrase.replace(" ", "").replace("-", "")
        message = f"{HTTPStatus(self.status).phrase} (injected fault)"
        return StorageError(self.status, phrase, message, http=self.status).response()


@dataclass
class _Received:
    size: int
    sha256: str
    content_type: str
    cache_control: str
    user_metadata: dict[str, Any] | None


Handler = Callable[[Request, str | None], Awaitable[Response]]


class FakeStorage:
    """The fake's state, controls and ASGI `app`. Thread-safe: tests read it while uvicorn serves it."""

    def __init__(self, jwt_secret: str) -> None:
        _check_secret(jwt_secret)
        self._secret = jwt_secret
        self._lock = threading.Lock()
        self._dir: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(prefix="fake-st-")
        self._root = Path(self._dir.name)
        self._buckets: dict[str, Bucket] = {}
        self._objects: dict[tuple[str, str], StoredObject] = {}
        self._writes: Counter[tuple[str, str]] = Counter()
        self._faults: list[_Fault] = []
        self._requests: list[RequestRecord] = []
        self._largest_in_memory = 0
        self.app = Starlette(routes=self._routes(), exception_handlers={HTTPException: _route_error})

    # --- controls and records ----------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 503,
        bucket: str | None = None,
        operation: Operation = "upload",
        *,
        reset: bool = False,
    ) -> None:
        """Fail the next `n` matching requests with `status` and a Storage-shaped body, or by resetting the
        connection (`reset=True`). `operation="any"` matches every storage request."""
        if n > 0:
            with self._lock:
                self._faults.append(_Fault(n, status, bucket, operation, reset))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(fault.remaining for fault in self._faults)

    @property
    def buckets(self) -> dict[str, Bucket]:
        with self._lock:
            return {key: dataclasses.replace(bucket) for key, bucket in self._buckets.items()}

    @property
    def objects(self) -> dict[tuple[str, str], StoredObject]:
        """A snapshot of the stored objects by (bucket, path)."""
        with self._lock:
            return {key: dataclasses.replace(obj) for key, obj in self._objects.items()}

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def object(self, bucket: str, path: str) -> StoredObject:
        """A snapshot of one stored object; KeyError if there is none."""
        with self._lock:
            return dataclasses.replace(self._objects[(bucket, path)])

    def writes(self, bucket: str, path: str) -> int:
        """Successful uploads to this key, including ones made before it was removed."""
        with self._lock:
            return self._writes[(bucket, path)]

    def read(self, bucket: str, path: str) -> bytes:
        with self._lock:
            return self._objects[(bucket, path)].file.read_bytes()

    @property
    def largest_in_memory_body(self) -> int:
        """The largest request body (JSON, or an upload small enough to stay in the spool) held in memory."""
        with self._lock:
            return self._largest_in_memory

    def reset(self) -> None:
        """Forget buckets, objects, faults and records."""
        with self._lock:
            files = [obj.file for obj in self._objects.values()]
            self._buckets.clear()
            self._objects.clear()
            self._writes.clear()
            self._faults.clear()
            self._requests.clear()
            self._largest_in_memory = 0
        for path in files:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the stored files; the records stay readable."""
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    # --- plumbing ------------------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        key = "/{bucket}/{key:path}"
        # Storage's static segments (sign, list, info, authenticated, public) win over /object/{bucket}/...
        table: list[tuple[str, str, Operation, Handler, bool]] = [
            ("/bucket", "GET", "bucket", self._list_buckets, True),
            ("/bucket", "POST", "bucket", self._create_bucket, True),
            ("/bucket/{bucket}", "GET", "bucket", self._get_bucket, True),
            ("/bucket/{bucket}", "PUT", "bucket", self._update_bucket, True),
            ("/bucket/{bucket}", "DELETE", "bucket", self._delete_bucket, True),
            ("/bucket/{bucket}/empty", "POST", "bucket", self._empty_bucket, True),
            ("/object/sign/{bucket}", "POST", "sign", self._sign_many, True),
            ("/object/sign" + key, "POST", "sign", self._sign, True),
            ("/object/sign" + key, "GET", "download", self._signed_download, False),
            ("/object/list/{bucket}", "POST", "list", self._list_objects, True),
            ("/object/info/authenticated" + key, "GET", "info", self._info, True),
            ("/object/info" + key, "GET", "info", self._info, True),
            ("/object/authenticated" + key, "GET", "download", self._download, True),
            ("/object/public" + key, "GET", "download", self._public_download, False),
            ("/object/{bucket}", "DELETE", "remove", self._remove, True),
            ("/object" + key, "POST", "upload", self._upload, True),
            ("/object" + key, "PUT", "upload", self._upload, True),
            ("/object" + key, "GET", "download", self._download, True),
            ("/object" + key, "DELETE", "remove", self._delete_object, True),
        ]
        return [Route(path, self._endpoint(op, fn, auth), methods=[m]) for path, m, op, fn, auth in table]

    def _endpoint(self, operation: Operation, handler: Handler, auth: bool) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            bucket = request.path_params.get("bucket")
            role: str | None = None
            fault = self._take_fault(operation, bucket)
            try:
                if fault is not None:
                    # Read the upload first, so that the client gets the answer rather than a broken pipe.
                    async for _ in request.stream():
                        pass
                    response = fault.response()
                else:
                    if auth:
                        role = self._role(request)
                    response = await handler(request, role)
            except StorageError as exc:
                response = exc.response()
            except HTTPException as exc:  # Starlette's own refusals, e.g. a malformed multipart body
                response = StorageError(
                    exc.status_code, "InvalidRequest", str(exc.detail), http=exc.status_code
                ).response()
            except ClientDisconnect:
                response = Response(status_code=499)  # nginx's "client closed request"; nobody reads it
            status = 0 if isinstance(response, DropConnection) else response.status_code
            record = RequestRecord(request.method, request.url.path, status, role, operation, bucket)
            with self._lock:
                self._requests.append(record)
            return response

        return endpoint

    def _take_fault(self, operation: Operation, bucket: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.operation in ("any", operation) and fault.bucket in (None, bucket):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _role(self, request: Request) -> str:
        token = re.sub(r"^Bearer\s+", "", request.headers.get("authorization", ""), flags=re.IGNORECASE)
        token = token or request.headers.get("apikey", "")
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], options={"verify_aud": False})
        except jwt.PyJWTError as exc:
            raise _access_denied(_jose_message(exc)) from None
        return str(claims.get("role", "anon"))

    async def _json(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        self._note_memory(len(body))
        try:
            value = json.loads(body or b"{}")
        except ValueError:
            raise _invalid("Body is not valid JSON") from None
        if not isinstance(value, dict):
            raise _invalid("body must be object")
        return value

    def _note_memory(self, size: int) -> None:
        with self._lock:
            self._largest_in_memory = max(self._largest_in_memory, size)

    def _bucket(self, bucket_id: str, role: str | None) -> Bucket:
        with self._lock:
            bucket = self._buckets.get(bucket_id)
        if bucket is None or role != SERVICE_ROLE:  # without policies RLS hides every bucket
            raise _no_such_bucket()
        return bucket

    def _object(
        self, bucket_id: str, key: str, role: str | None, *, public_reads: bool = True
    ) -> StoredObject:
        """The object, if `role` may see it. Public buckets let anyone read (not sign or delete) objects."""
        with self._lock:
            bucket, obj = self._buckets.get(bucket_id), self._objects.get((bucket_id, key))
        visible = role == SERVICE_ROLE or (public_reads and bucket is not None and bucket.public)
        if obj is None or not visible:
            raise _no_such_key()
        return obj

    def _existing_bucket(self, bucket_id: str) -> None:
        # Reads look the bucket up as the superuser first, so a missing bucket says so even to anon.
        with self._lock:
            if bucket_id not in self._buckets:
                raise _no_such_bucket()

    # --- buckets -------------------------------------------------------------------------------------------

    async def _list_buckets(self, request: Request, role: str | None) -> Response:
        with self._lock:
            visible = [b.as_json() for b in self._buckets.values()] if role == SERVICE_ROLE else []
        return JSONResponse(visible)

    async def _create_bucket(self, request: Request, role: str | None) -> Response:
        body = await self._json(request)
        name = body.get("name") or body.get("id")
        if not isinstance(name, str) or not name:
            raise _invalid("body must have required property 'name'")
        if role != SERVICE_ROLE:
            raise _access_denied(RLS_DENIED)
        bucket = Bucket(id=str(body.get("id") or name), name=name, public=bool(body.get("public", False)))
        _apply_bucket_options(bucket, body)
        with self._lock:
            if bucket.id in self._buckets:
                raise _duplicate("BucketAlreadyExists")
            self._buckets[bucket.id] = bucket
        return JSONResponse({"name": name})

    async def _get_bucket(self, request: Request, role: str | None) -> Response:
        return JSONResponse(self._bucket(request.path_params["bucket"], role).as_json())

    async def _update_bucket(self, request: Request, role: str | None) -> Response:
        body = await self._json(request)
        bucket = self._bucket(request.path_params["bucket"], role)
        with self._lock:
            if "public" in body:
                bucket.public = bool(body["public"])
            _apply_bucket_options(bucket, body)
            bucket.updated_at = _now()
        return JSONResponse({"message": "Successfully updated"})

    async def _delete_bucket(self, request: Request, role: str | None) -> Response:
        bucket = self._bucket(request.path_params["bucket"], role)
        with self._lock:
            if any(b == bucket.id for b, _ in self._objects):
                raise StorageError(409, "ResourceNotEmpty", "The bucket you tried to delete is not empty")
            self._buckets.pop(bucket.id, None)
        return JSONResponse({"message": "Successfully deleted"})

    async def _empty_bucket(self, request: Request, role: str | None) -> Response:
        bucket = self._bucket(request.path_params["bucket"], role)
        with self._lock:
            keys = [key for key in self._objects if key[0] == bucket.id]
        self._delete(keys)
        return JSONResponse({"message": "Empty bucket has been queued. Completion may take up to an hour."})

    # --- uploads -------------------------------------------------------------------------------------------

    async def _upload(self, request: Request, role: str | None) -> Response:
        bucket_id, key = request.path_params["bucket"], request.path_params["key"]
        # Storage compares the header with "true" exactly; PUT (update) is always an upsert.
        upsert = request.method == "PUT" or request.headers.get("x-upsert") == "true"
        with self._lock:
            bucket = self._buckets.get(bucket_id)
        if bucket is None or role != SERVICE_ROLE:
            # Read the body first: answering early leaves the client writing into a closed socket.
            async for _ in request.stream():
                pass
            raise _no_such_bucket() if bucket is None else _access_denied(RLS_DENIED)
        target = self._root / uuid.uuid4().hex
        try:
            received = await self._receive(request, target)
            if bucket.file_size_limit is not None and received.size > bucket.file_size_limit:
                too_large = "The object exceeded the maximum allowed size"
                raise StorageError(413, "EntityTooLarge", too_large, error="Payload too large")
            mime = received.content_type.split(";")[0].strip().lower()
            allowed = bucket.allowed_mime_types
            if allowed and not any(_mime_matches(pattern, mime) for pattern in allowed):
                raise StorageError(
                    415, "InvalidMimeType", f"mime type {mime} is not supported", error="invalid_mime_type"
                )
            obj = self._commit(bucket_id, key, target, received, upsert)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return JSONResponse({"Id": obj.id, "Key": f"{bucket_id}/{key}"})

    async def _receive(self, request: Request, target: Path) -> _Received:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):  # a raw body, as storage-js can send
            digest, size = hashlib.sha256(), 0
            with target.open("wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)  # local disk: short enough to do on the event loop
                    digest.update(chunk)
                    size += len(chunk)
            cache = request.headers.get("cache-control", "no-cache")
            return _Received(size, digest.hexdigest(), content_type or "text/plain", cache, None)
        async with request.form(max_files=1, max_fields=10) as form:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise _invalid("No content provided")
            fields = {name: value for name, value in form.items() if isinstance(value, str)}
            # busboy (Storage's parser) defaults a part without Content-Type to text/plain, as RFC 7578 does.
            mime = fields.get("contentType") or part.content_type or "text/plain"
            size, sha = await run_in_threadpool(_copy, part.file, target)
            if not getattr(part.file, "_rolled", True):  # still in SpooledTemporaryFile's memory buffer
                self._note_memory(size)
        cache = f"max-age={fields['cacheControl']}" if fields.get("cacheControl") else "no-cache"
        try:
            user_metadata = json.loads(fields["metadata"]) if "metadata" in fields else None
        except ValueError:
            raise _invalid("Invalid metadata") from None
        return _Received(size, sha, mime, cache, user_metadata)

    def _commit(self, bucket_id: str, key: str, file: Path, got: _Received, upsert: bool) -> StoredObject:
        with self._lock:
            if bucket_id not in self._buckets:
                raise _no_such_bucket()
            old = self._objects.get((bucket_id, key))
            if old is not None and not upsert:
                raise _duplicate("KeyAlreadyExists")
            self._writes[(bucket_id, key)] += 1
            now = _now()
            obj = StoredObject(
                bucket=bucket_id,
                path=key,
                size=got.size,
                content_type=got.content_type,
                sha256=got.sha256,
                cache_control=got.cache_control,
                upsert=upsert,
                writes=self._writes[(bucket_id, key)],
                id=old.id if old else str(uuid.uuid4()),  # an upsert updates the row in place
                user_metadata=got.user_metadata,
                created_at=old.created_at if old else now,
                updated_at=now,
                file=file,
            )
            self._objects[(bucket_id, key)] = obj
        if old is not None:
            old.file.unlink(missing_ok=True)  # downloads in flight keep their open handle
        return obj

    # --- signing and downloads -----------------------------------------------------------------------------

    async def _sign(self, request: Request, role: str | None) -> Response:
        expires_in = _expires_in(await self._json(request))
        bucket_id, key = request.path_params["bucket"], request.path_params["key"]
        self._object(bucket_id, key, role, public_reads=False)
        return JSONResponse({"signedURL": self._signed_url(bucket_id, key, expires_in)})

    async def _sign_many(self, request: Request, role: str | None) -> Response:
        body = await self._json(request)
        expires_in, paths = _expires_in(body), body.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise _invalid("body must have required property 'paths'")
        bucket_id = request.path_params["bucket"]
        with self._lock:
            present = {p for p in paths if (bucket_id, p) in self._objects} if role == SERVICE_ROLE else set()
        missing = "Either the object does not exist or you do not have access to it"
        return JSONResponse(
            [
                {"error": None, "path": p, "signedURL": self._signed_url(bucket_id, p, expires_in)}
                if p in present
                else {"error": missing, "path": p, "signedURL": None}
                for p in paths
            ]
        )

    def _signed_url(self, bucket_id: str, key: str, expires_in: int) -> str:
        now = int(time.time())
        claims = {"url": f"{bucket_id}/{key}", "scope": "download", "iat": now, "exp": now + expires_in}
        # Storage sends the path unencoded (it decodeURI()s it), and storage3 encodes it when it joins.
        return f"/object/sign/{bucket_id}/{key}?token={jwt.encode(claims, self._secret, algorithm='HS256')}"

    async def _signed_download(self, request: Request, role: str | None) -> Response:
        bucket_id, key = request.path_params["bucket"], request.path_params["key"]
        try:
            claims = jwt.decode(request.query_params.get("token", ""), self._secret, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            raise StorageError(400, "InvalidJWT", _jose_message(exc)) from None
        if claims.get("scope", "download") != "download":
            raise StorageError(400, "InvalidSignature", "Token is not scoped for download")
        if claims.get("url") != f"{bucket_id}/{key}":
            raise StorageError(400, "InvalidSignature", "Invalid signature")
        return self._serve(request, bucket_id, key)

    async def _download(self, request: Request, role: str | None) -> Response:
        bucket_id, key = request.path_params["bucket"], request.path_params["key"]
        self._existing_bucket(bucket_id)
        self._object(bucket_id, key, role)
        return self._serve(request, bucket_id, key)

    async def _public_download(self, request: Request, role: str | None) -> Response:
        bucket_id, key = request.path_params["bucket"], request.path_params["key"]
        with self._lock:
            bucket = self._buckets.get(bucket_id)
        if bucket is None or not bucket.public:
            raise _no_such_bucket()
        return self._serve(request, bucket_id, key)

    def _serve(self, request: Request, bucket_id: str, key: str) -> Response:
        """The object's bytes, access already checked. Looked up and opened under the lock: an overwrite or
        removal unlinks the old file only after swapping it out, and an open handle keeps it readable."""
        with self._lock:
            obj = self._objects.get((bucket_id, key))
            if obj is None:
                raise _no_such_key()
            handle = obj.file.open("rb") if request.method != "HEAD" else None
        headers = {
            "content-type": obj.content_type,
            "content-length": str(obj.size),
            "cache-control": obj.cache_control,
            "etag": obj.metadata()["eTag"],
            "last-modified": format_datetime(datetime.fromisoformat(obj.updated_at), usegmt=True),
        }
        if (name := request.query_params.get("download")) is not None:
            headers["content-disposition"] = f"attachment; filename={name}" if name else "attachment;"
        if handle is None:
            return Response(status_code=200, headers=headers)
        return StreamingResponse(_chunks(handle), headers=headers)

    async def _info(self, request: Request, role: str | None) -> Response:
        self._existing_bucket(request.path_params["bucket"])
        obj = self._object(request.path_params["bucket"], request.path_params["key"], role)
        return JSONResponse(
            {
                "id": obj.id,
                "name": obj.path,
                "version": obj.id,
                "bucket_id": obj.bucket,
                "size": obj.size,
                "content_type": obj.content_type,
                "cache_control": obj.cache_control,
                "etag": obj.metadata()["eTag"],
                "metadata": obj.user_metadata,
                "last_modified": obj.updated_at,
                "created_at": obj.created_at,
            }
        )

    # --- listing and removal -------------------------------------------------------------------------------

    async def _list_objects(self, request: Request, role: str | None) -> Response:
        body = await self._json(request)
        prefix = str(body.get("prefix") or "").strip("/")
        search = str(body.get("search") or "").lower()
        try:
            limit, offset = int(body.get("limit") or 100), int(body.get("offset") or 0)
        except (TypeError, ValueError):
            raise _invalid("body/limit and body/offset must be integers") from None
        sort = body.get("sortBy") or {}
        folder = f"{prefix}/" if prefix else ""
        with self._lock:
            mine = [o for (b, _), o in self._objects.items() if b == request.path_params["bucket"]]
        entries: dict[str, dict[str, Any]] = {}
        for obj in mine if role == SERVICE_ROLE else []:
            if not obj.path.startswith(folder):
                continue
            name, _, rest = obj.path[len(folder) :].partition("/")
            if not name.lower().startswith(search):
                continue
            if rest:  # a deeper object: its first segment is a folder, listed without id or metadata
                blank = dict.fromkeys(("id", "updated_at", "created_at", "last_accessed_at", "metadata"))
                entries.setdefault(name, {"name": name, **blank})
            else:
                row = obj.row()
                entries[name] = {k: row[k] for k in ("id", "updated_at", "created_at", "last_accessed_at")}
                entries[name].update(name=name, metadata=row["metadata"])
        column = sort.get("column", "name") if isinstance(sort, dict) else "name"
        ordered = sorted(entries.values(), key=lambda e: (e.get(column) is None, str(e.get(column) or "")))
        if isinstance(sort, dict) and sort.get("order") == "desc":
            ordered.reverse()
        return JSONResponse(ordered[offset : offset + limit])

    async def _remove(self, request: Request, role: str | None) -> Response:
        prefixes = (await self._json(request)).get("prefixes")
        if not isinstance(prefixes, list):
            raise _invalid("body must have required property 'prefixes'")
        bucket_id = request.path_params["bucket"]
        keys = [(bucket_id, str(p)) for p in prefixes] if role == SERVICE_ROLE else []
        return JSONResponse([obj.row() for obj in self._delete(keys)])

    async def _delete_object(self, request: Request, role: str | None) -> Response:
        bucket_id, key = request.path_params["bucket"], request.path_params["key"]
        obj = self._object(bucket_id, key, role, public_reads=False)
        self._delete([(obj.bucket, obj.path)])
        return JSONResponse({"message": "Successfully deleted"})

    def _delete(self, keys: list[tuple[str, str]]) -> list[StoredObject]:
        with self._lock:
            gone = [obj for key in keys if (obj := self._objects.pop(key, None)) is not None]
        for obj in gone:
            obj.file.unlink(missing_ok=True)
        return gone


def _apply_bucket_options(bucket: Bucket, body: dict[str, Any]) -> None:
    if "file_size_limit" in body:
        bucket.file_size_limit = _parse_size(body["file_size_limit"])
    if "allowed_mime_types" in body:
        types = body["allowed_mime_types"]
        bucket.allowed_mime_types = [t for t in types if t] if isinstance(types, list) else None


def _parse_size(value: Any) -> int | None:
    """Storage takes a byte count or a string like "50MB"."""
    if value is None or isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*(B|KB|MB|GB)?\s*", str(value), flags=re.IGNORECASE)
    if match is None:
        raise _invalid("Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B")
    unit = (match.group(2) or "B").upper()
    return int(match.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit]


def _mime_matches(pattern: str, mime: str) -> bool:
    pattern = pattern.strip().lower()
    return mime.startswith(pattern[:-1]) if pattern.endswith("/*") else mime == pattern


def _expires_in(body: dict[str, Any]) -> int:
    # storage3 sends a string; Storage's schema says integer >= 1 and its validator coerces.
    try:
        value = int(str(body.get("expiresIn")))
    except ValueError:
        raise _invalid("body/expiresIn must be integer") from None
    if value < 1:
        raise _invalid("body/expiresIn must be >= 1")
    return value


def _copy(source: IO[bytes], target: Path) -> tuple[int, str]:
    source.seek(0)
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:  # closed at the end, or when the abandoned generator is collected
        while chunk := handle.read(CHUNK):
            yield chunk


async def _route_error(request: Request, exc: Exception) -> Response:
    """Fastify's answer for an unknown route or method."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = f"Route {request.method}:{request.url.path} not found" if status in (404, 405) else str(exc)
    body = {"statusCode": status, "error": HTTPStatus(status).phrase, "message": message}
    return JSONResponse(body, status)


def __getattr__(name: str) -> Any:
    # The gateway lives in gateway.py (which imports this module); it is importable from here too.
    if name in ("SupabaseGateway", "ServerThread"):
        from tests.stack import gateway

        return getattr(gateway, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
