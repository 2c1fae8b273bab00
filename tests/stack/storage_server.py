"""The real Supabase Storage API server (supabase/storage v1.36.4, Node) for the test stack, and
`StorageAdmin`, which answers what tests ask about what it stored.

Where it comes from: $SUPABASE_STORAGE_SOURCE, else `../shared/supabase-storage/source` beside the
repository (read-only there, so it is built in a writable copy). The build (`npm ci`, the multipart fix,
esbuild) is cached in `.test-services/storage/<hash of the source>/`, so only the first session after a
change of source pays for it (about 40-90 s), and a lock keeps two sessions from building it at once.
`python -m tests.stack.storage_server build` builds it ahead of time (scripts/install-test-services.sh does).

It runs on the stack's PostgreSQL as a superuser, like Supabase's own storage admin: at start it applies its
migrations there (the `storage` schema, and grants to anon, authenticated and service_role, which
supabase_roles.sql has already made), and it keeps its files in a directory with extended attributes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.stack.gateway import Operation, RequestRecord, StorageFaults
from tests.stack.postgres import PostgresCluster
from tests.stack.service import Launch, ServiceProcess, answers_ok, clean_env, free_port

REPO = Path(__file__).resolve().parents[2]
SOURCE_SETTING = "SUPABASE_STORAGE_SOURCE"
DEFAULT_SOURCE = REPO.parent / "shared" / "supabase-storage" / "source"
BUILDS = REPO / ".test-services" / "storage"
# Re-applies the one change of Supabase's fork of @fastify/multipart (see the source's README); it sits
# beside the shared source, and a checkout of upstream's tag (which fetches the fork itself) has none.
MULTIPART_FIX = "apply-multipart-fix.js"
BUILT_MARKER = ".clipgen-built"
SERVER_SCRIPT = Path("dist") / "start" / "server.js"
# Storage's tenant id in single-tenant mode: the file backend keeps objects under <files>/<tenant>/<bucket>.
TENANT_ID = "stub"


class StorageUnavailable(RuntimeError):
    """What is missing to run the server, said as what to install or set."""


def storage_source() -> Path:
    configured = os.environ.get(SOURCE_SETTING)
    if configured:
        return Path(configured).expanduser().resolve()
    return next((s for s in _default_sources() if (s / "package.json").is_file()), DEFAULT_SOURCE).resolve()


def _default_sources() -> list[Path]:
    """Beside this checkout, else beside the checkout it was cloned from (`git clone . /tmp/x` keeps the
    origin's path, so a scratch clone still finds the shared source without setting anything)."""
    sources = [DEFAULT_SOURCE]
    found = subprocess.run(
        ["git", "-C", str(REPO), "remote", "get-url", "origin"], capture_output=True, text=True, check=False
    )
    origin = Path(found.stdout.strip())
    if found.returncode == 0 and origin.is_absolute() and origin.is_dir():
        sources.append(origin.resolve().parent / "shared" / "supabase-storage" / "source")
    return sources


def check_prerequisites(source: Path) -> None:
    if not (source / "package.json").is_file():
        raise StorageUnavailable(
            f"the Supabase Storage source is not at {source}: set {SOURCE_SETTING} to a checkout of "
            "supabase/storage v1.36.4 (by default ../shared/supabase-storage/source beside the repository)"
        )
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        raise StorageUnavailable(
            f"{' and '.join(missing)} not found: install Node 20 and npm (and g++, make, python3 for its "
            "native addon), e.g. with scripts/install-test-services.sh"
        )


def source_hash(source: Path) -> str:
    """Every file's path and bytes (and the multipart fix beside the source): any change means a new build."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in source.rglob("*") if p.is_file() and "node_modules" not in p.relative_to(source).parts
    )
    fix = source.parent / MULTIPART_FIX
    for path in [*files, *([fix] if fix.is_file() else [])]:
        digest.update(str(path.relative_to(source.parent)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def built_app(source: Path | None = None, *, log: bool = True) -> Path:
    """The cached build of `source` (the setting's by default), built first if it is not there yet."""
    source = source or storage_source()
    check_prerequisites(source)
    target = BUILDS / source_hash(source)
    app = target / "app"
    if (target / BUILT_MARKER).is_file():
        return app
    BUILDS.mkdir(parents=True, exist_ok=True)
    with (BUILDS / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it: wait, then use its build
        if not (target / BUILT_MARKER).is_file():
            started = time.monotonic()
            shutil.rmtree(target, ignore_errors=True)  # what a killed build left behind
            shutil.copytree(source, app, ignore=shutil.ignore_patterns("node_modules", "dist"))
            _build(app, source.parent / MULTIPART_FIX)
            (target / BUILT_MARKER).write_text(f"{source}\n")
            if log:
                print(f"built Supabase Storage in {time.monotonic() - started:.0f}s: {app}", file=sys.stderr)
    return app


def _build(app: Path, fix: Path) -> None:
    env = clean_env()
    node = Path(shutil.which("node") or "node").resolve()
    # node-gyp compiles the fs-xattr addon against these headers; without them it downloads Node's.
    if (node.parents[1] / "include" / "node").is_dir():
        env.setdefault("npm_config_nodedir", str(node.parents[1]))
    steps = [["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]]
    if fix.is_file():
        steps.append(["node", str(fix)])
    # `npm run build` without its `tsc -noEmit`, which fails only on a type of the pg-boss fork.
    steps += [["node", "./build.js"], ["npx", "--no-install", "resolve-tspaths"]]
    for step in steps:
        result = subprocess.run(step, cwd=app, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-3000:]
            raise StorageUnavailable(f"building Supabase Storage failed at `{' '.join(step)}`:\n{output}")


def has_user_xattrs(directory: Path) -> bool:
    """Whether files in `directory` take user extended attributes (the file backend keeps metadata there)."""
    with tempfile.NamedTemporaryFile(dir=directory) as probe:
        try:
            os.setxattr(probe.name, "user.clipgen-probe", b"1")
        except OSError:
            return False
    return True


def xattr_parent() -> Path:
    """Where the server's directory goes: the temp dir if its files take xattrs (tmpfs often does not), else
    .test-services (the file backend keeps object metadata in xattrs)."""
    base = Path(tempfile.gettempdir())
    if not has_user_xattrs(base):
        base = BUILDS / "files"
        base.mkdir(parents=True, exist_ok=True)
    return base


class StorageServer:
    """`node dist/start/server.js` on a free 127.0.0.1 port, answering GET /status when the `with` starts.

    `url` is the API root without Supabase's `/storage/v1` prefix (the gateway adds it).
    """

    def __init__(
        self, app: Path, cluster: PostgresCluster, *, jwt_secret: str, startup_timeout: float = 90.0
    ) -> None:
        self.app = app
        self.cluster = cluster
        self.jwt_secret = jwt_secret
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self._service = ServiceProcess(
            "Supabase Storage",
            prefix="storage-stack-",
            port_taken=["EADDRINUSE"],
            startup_timeout=startup_timeout,
            # SIGKILL when the tests die: once it has served a request it ignores SIGTERM. For the same reason
            # stop() waits only briefly after SIGTERM (it logs "Shutdown successfully" and stays up).
            die_signal=signal.SIGKILL,
            stop_signals=((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)),
            probe_interval_s=0.1,
            tries=3,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def files(self) -> Path:
        """The file backend's directory (Path() when the server is not running)."""
        return self._service.root / "files" if self._service.root != Path() else Path()

    def __enter__(self) -> Self:
        self._service.open(self._launch, self._is_ready, parent=xattr_parent(), prepare=self._make_files)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server, then delete its files and log. Safe to call twice."""
        self._service.stop()

    def log_text(self) -> str:
        return self._service.log_text()

    def _launch(self) -> Launch:
        # The port can be taken between free_port() and the server binding it: the service tries another.
        self.port = free_port()
        return Launch(["node", str(SERVER_SCRIPT)], env=self._env(), cwd=self.app)

    def _make_files(self) -> None:
        self.files.mkdir()

    def _is_ready(self) -> bool:
        return answers_ok(f"{self.url}/status")

    def _env(self) -> dict[str, str]:
        return {
            **clean_env(),
            "NODE_ENV": "production",
            "SERVER_HOST": self.host,
            "SERVER_PORT": str(self.port),
            "AUTH_JWT_SECRET": self.jwt_secret,
            "DB_INSTALL_ROLES": "true",
            "DATABASE_URL": self.cluster.dsn(),
            "STORAGE_BACKEND": "file",
            "STORAGE_FILE_BACKEND_PATH": str(self.files),
            "TENANT_ID": TENANT_ID,
            "REGION": "local",
            "GLOBAL_S3_BUCKET": "stub",
            "UPLOAD_FILE_SIZE_LIMIT": str(500 * 1024 * 1024),
        }


# --- what tests ask about what the server stored ---------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    id: str
    name: str
    public: bool
    file_size_limit: int | None
    allowed_mime_types: list[str] | None


@dataclass(frozen=True)
class StoredObject:
    """A row of storage.objects; `metadata` is what Storage recorded about the bytes."""

    bucket: str
    path: str
    id: str
    size: int
    content_type: str
    etag: str  # the stored bytes' MD5, hex, without the quotes of the eTag header
    cache_control: str
    user_metadata: dict[str, object] | None
    created_at: str
    updated_at: str


class StorageAdmin:
    """What tests ask about Storage: its own tables (storage.buckets, storage.objects) read with psql, and
    the gateway's record of requests and its fault controls (`fail_next`, `delay_next`, `clear_faults`)."""

    def __init__(self, cluster: PostgresCluster, server: StorageServer, faults: StorageFaults) -> None:
        self._cluster = cluster
        self._server = server
        self._faults = faults
        self.fail_next = faults.fail_next
        self.delay_next = faults.delay_next
        self.clear_faults = faults.clear_faults

    @property
    def requests(self) -> list[RequestRecord]:
        return self._faults.requests

    @property
    def pending_faults(self) -> int:
        return self._faults.pending_faults

    @property
    def buckets(self) -> dict[str, Bucket]:
        rows = self._rows("select id, name, public, file_size_limit, allowed_mime_types from storage.buckets")
        return {str(row["id"]): Bucket(**row) for row in rows}  # type: ignore[arg-type]

    @property
    def objects(self) -> dict[tuple[str, str], StoredObject]:
        """Every stored object by (bucket, path)."""
        return self._objects("true")

    def object(self, bucket: str, path: str) -> StoredObject:
        """One stored object; KeyError if there is none."""
        where = f"bucket_id = {_literal(bucket)} and name = {_literal(path)}"
        return self._objects(where)[(bucket, path)]

    def writes(self, bucket: str, path: str, *, operation: Operation = "upload") -> int:
        """Successful uploads to this key that went through the gateway, including ones before a removal."""
        target = f"/object/{bucket}/{path}"
        return sum(
            1
            for r in self.requests
            if r.operation == operation and r.status == 200 and r.path.endswith(target) and r.bucket == bucket
        )

    def reset(self) -> None:
        """No buckets, objects (rows and files), faults or recorded requests. Storage refuses direct deletes
        from its tables unless the session asks for them."""
        self._faults.clear_faults()
        self._cluster.psql(
            "begin; set local storage.allow_delete_query = 'true';"
            "delete from storage.objects; delete from storage.buckets; commit;"
        )
        for child in self._server.files.iterdir() if self._server.files.is_dir() else []:
            shutil.rmtree(child, ignore_errors=True)
        self._faults.clear_requests()

    def _rows(self, query: str) -> list[dict[str, object]]:
        """The query's rows as JSON objects (psql prints one per line)."""
        output = self._cluster.psql(f"select row_to_json(r) from ({query}) r")
        return [json.loads(line) for line in output.splitlines() if line]

    def _objects(self, where: str) -> dict[tuple[str, str], StoredObject]:
        rows = self._rows(
            "select bucket_id, name, id, metadata, user_metadata, created_at, updated_at "
            f"from storage.objects where {where}"
        )
        return {(obj.bucket, obj.path): obj for obj in map(_stored_object, rows)}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _stored_object(row: dict[str, object]) -> StoredObject:
    metadata = row["metadata"] if isinstance(row["metadata"], dict) else {}
    return StoredObject(
        bucket=str(row["bucket_id"]),
        path=str(row["name"]),
        id=str(row["id"]),
        size=int(metadata.get("size", -1)),
        content_type=str(metadata.get("mimetype", "")),
        etag=str(metadata.get("eTag", "")).strip('"'),
        cache_control=str(metadata.get("cacheControl", "")),
        user_metadata=row["user_metadata"],  # type: ignore[arg-type]
        created_at=str(row["created_at"]),
        updated_at=str(row["updated_at"]),
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m tests.stack.storage_server build")
    try:
        print(built_app())
    except StorageUnavailable as exc:
        sys.exit(f"storage_server: {exc}")
