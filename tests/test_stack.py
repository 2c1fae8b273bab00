"""The shipped Supabase migration, applied as shipped to PostgreSQL 15 with Supabase's roles, and used
through the real PostgREST with the real supabase-py PostgREST client."""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import httpx
import jwt
import pytest
from postgrest import APIError, APIResponse, SyncPostgrestClient

from tests.stack.fixtures import SupabaseDb, apply_migrations, migration_files, prepare_database
from tests.stack.postgres import PostgresCluster
from tests.stack.postgrest import POSTGREST_VERSION
from tests.stack.service import clean_env

TABLES = ("clips", "clip_thumbnails", "job_events")
ALL_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"


def auth(key: str) -> dict[str, str]:
    """The headers supabase-py sends with every request."""
    return {"apikey": key, "Authorization": f"Bearer {key}"}


@contextmanager
def rest(db: SupabaseDb, key: str) -> Iterator[SyncPostgrestClient]:
    """supabase-py's PostgREST client as `create_client` sets it up, minus the /rest/v1 prefix."""
    headers = {"Accept": "application/json", "Content-Type": "application/json", **auth(key)}
    with SyncPostgrestClient(db.postgrest.url, headers=headers) as client:
        yield client


@contextmanager
def fresh_database(cluster: PostgresCluster) -> Iterator[str]:
    name = f"fresh_{secrets.token_hex(4)}"
    cluster.psql(f"create database {name}")
    try:
        yield name
    finally:
        cluster.psql(f"drop database {name} with (force)")


def schema_dump(cluster: PostgresCluster, db: str) -> str:
    result = subprocess.run(
        [
            str(cluster.bindir / "pg_dump"),
            "--schema-only",
            f"--host={cluster.socket_dir}",
            f"--port={cluster.port}",
            f"--username={cluster.superuser}",
            f"--dbname={db}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    )
    # pg_dump 15.14+ brackets the dump with \restrict <random key> lines; they differ on every run.
    return "".join(
        line for line in result.stdout.splitlines(True) if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def rows(response: APIResponse) -> list[dict[str, Any]]:
    """A response's rows, typed: postgrest-py types `data` as any JSON."""
    return cast(list[dict[str, Any]], response.data)


def user_key(secret: str) -> str:
    """A signed-in user's access token, as Supabase Auth issues it."""
    now = int(time.time())
    claims = {"role": "authenticated", "sub": str(uuid.uuid4()), "aud": "authenticated", "iat": now}
    return jwt.encode({**claims, "exp": now + 3600}, secret, algorithm="HS256")


def clip(job_id: str, **fields: object) -> dict[str, object]:
    return {"job_id": job_id, "clip_index": 0, "status": "running", "model": "test/model", **fields}


def thumbnail(job_id: str, path: str = "t.jpg") -> dict[str, object]:
    return {"job_id": job_id, "clip_index": 0, "thumbnail_path": path, "thumbnail_url": f"https://cdn/{path}"}


def event(job_id: str) -> dict[str, object]:
    return {"job_id": job_id, "event": "started", "data": {}}


ROW: dict[str, Callable[[str], dict[str, object]]] = {
    "clips": clip,
    "clip_thumbnails": thumbnail,
    "job_events": event,
}


def test_migrations_exist() -> None:
    assert migration_files(), "supabase/migrations has no .sql files"


def test_migrations_apply_to_an_empty_project_and_again(supabase_db: SupabaseDb) -> None:
    cluster = supabase_db.postgres
    with fresh_database(cluster) as db:
        prepare_database(cluster, db)
        # A control table proves the setup hands new tables to anon as Supabase does, so the revoke
        # checks below test the migration and not a too-strict stand-in.
        cluster.psql("create table public.control (id int)", user="postgres", db=db)
        assert cluster.psql("select has_table_privilege('anon', 'public.control', 'SELECT')", db=db) == "t"
        cluster.psql("drop table public.control", user="postgres", db=db)

        apply_migrations(cluster, db)
        first = schema_dump(cluster, db)
        apply_migrations(cluster, db)
        assert schema_dump(cluster, db) == first, "a second application changed the schema"

        tables = cluster.psql(
            "select string_agg(tablename, ',' order by tablename) from pg_tables where schemaname = 'public'",
            db=db,
        )
        assert tables == "clip_predictions,clip_thumbnails,clips,job_events,video_jobs"


def test_service_role_inserts_and_upserts_a_clip(supabase_db: SupabaseDb) -> None:
    job_id = str(uuid.uuid4())
    with rest(supabase_db, supabase_db.service_key) as client:
        inserted = rows(client.table("clips").insert(clip(job_id, prediction_id="p1")).execute())
        assert len(inserted) == 1

        finished = clip(job_id, status="success", attempts=2, actual_duration=5.0, cost=0.25)
        upserted = rows(client.table("clips").upsert(finished, on_conflict="job_id,clip_index").execute())
        assert [(r["id"], r["status"], r["attempts"]) for r in upserted] == [
            (inserted[0]["id"], "success", 2)
        ]

        stored = rows(client.table("clips").select("*").eq("job_id", job_id).execute())
    assert len(stored) == 1
    assert (stored[0]["status"], stored[0]["cost"], stored[0]["actual_duration"]) == ("success", 0.25, 5.0)
    # Upsert merges: a column the second write left out keeps its value.
    assert stored[0]["prediction_id"] == "p1"


def test_service_role_reads_job_events_after_an_id(supabase_db: SupabaseDb) -> None:
    job_id, other_job = str(uuid.uuid4()), str(uuid.uuid4())
    events: list[dict[str, object]] = [
        {"job_id": job_id, "event": f"step-{i}", "data": {"i": i}} for i in range(4)
    ]
    # Bulk inserts need the same keys in every row: supabase-py sends a missing key as NULL, not as the
    # column's default (here that would violate `data not null`).
    events.insert(2, {"job_id": other_job, "event": "elsewhere", "data": {}})
    with rest(supabase_db, supabase_db.service_key) as client:
        first_id = rows(client.table("job_events").insert(events).execute())[0]["id"]
        query = client.table("job_events").select("id,event,data").eq("job_id", job_id).gt("id", first_id)
        after = rows(query.order("id").execute())
    assert [(r["event"], r["data"]) for r in after] == [
        ("step-1", {"i": 1}),
        ("step-2", {"i": 2}),
        ("step-3", {"i": 3}),
    ]
    ids = [r["id"] for r in after]
    assert ids == sorted(ids)


def test_service_role_upserts_a_thumbnail(supabase_db: SupabaseDb) -> None:
    job_id = str(uuid.uuid4())
    with rest(supabase_db, supabase_db.service_key) as client:
        client.table("clip_thumbnails").insert(thumbnail(job_id, path="a.jpg")).execute()
        moved = thumbnail(job_id, path="b.jpg")
        client.table("clip_thumbnails").upsert(moved, on_conflict="job_id,clip_index").execute()
        stored = rows(client.table("clip_thumbnails").select("thumbnail_path").eq("job_id", job_id).execute())
    assert stored == [{"thumbnail_path": "b.jpg"}]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("table", TABLES)
def test_api_roles_can_neither_read_nor_write(supabase_db: SupabaseDb, role: str, table: str) -> None:
    # A row exists, so an empty answer can only mean the role may not see it.
    with rest(supabase_db, supabase_db.service_key) as service:
        service.table(table).insert(ROW[table](str(uuid.uuid4()))).execute()

    # An end user's token: what a signed-in app user would send.
    key = supabase_db.anon_key if role == "anon" else user_key(supabase_db.jwt_secret)
    with rest(supabase_db, key) as client:
        try:
            visible = rows(client.table(table).select("*").execute())
        except APIError as error:
            assert error.code == "42501", error
        else:
            assert visible == []
        with pytest.raises(APIError) as refused:
            client.table(table).insert(ROW[table](str(uuid.uuid4()))).execute()
        assert refused.value.code == "42501"


def test_no_key_is_treated_as_anon(supabase_db: SupabaseDb) -> None:
    # Without a JWT PostgREST uses db-anon-role (on Supabase the gateway also insists on an apikey).
    response = httpx.get(f"{supabase_db.postgrest.url}/clips")
    assert response.status_code == 401
    assert response.json()["code"] == "42501"


def test_rls_is_on_and_api_roles_hold_no_privileges(supabase_db: SupabaseDb) -> None:
    psql = supabase_db.postgres.psql
    for table in TABLES:
        relation = f"public.{table}"
        assert psql(f"select relrowsecurity from pg_class where oid = '{relation}'::regclass") == "t"
        # No policies either: RLS on and no policy means no rows for anyone without BYPASSRLS.
        assert psql(f"select count(*) from pg_policies where tablename = '{table}'") == "0"
        for role in ("anon", "authenticated"):
            held = psql(f"select has_table_privilege('{role}', '{relation}', '{ALL_PRIVILEGES}')")
            assert held == "f", f"{role} holds a privilege on {relation}"
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            held = psql(f"select has_table_privilege('service_role', '{relation}', '{privilege}')")
            assert held == "t", f"service_role lacks {privilege} on {relation}"


def test_indexes_exist(supabase_db: SupabaseDb) -> None:
    listing = supabase_db.postgres.psql(
        "select indexname, indexdef from pg_indexes where schemaname = 'public'"
    )
    indexes = dict(line.split("|", 1) for line in listing.splitlines())
    assert "(job_id, id)" in indexes["job_events_job_id_id_idx"]
    unique_job_clip = {
        definition.split(" ON ")[1].split(" ")[0]
        for definition in indexes.values()
        if definition.startswith("CREATE UNIQUE INDEX") and definition.endswith("(job_id, clip_index)")
    }
    assert unique_job_clip == {"public.clips", "public.clip_thumbnails"}


def test_only_the_service_role_may_append_events(supabase_db: SupabaseDb) -> None:
    check = "select has_function_privilege('{role}', 'public.append_job_event(uuid, text, jsonb)', 'execute')"
    assert supabase_db.postgres.psql(check.format(role="service_role")) == "t"
    assert supabase_db.postgres.psql(check.format(role="anon")) == "f"
    assert supabase_db.postgres.psql(check.format(role="authenticated")) == "f"


def test_postgrest_is_the_pinned_release(supabase_db: SupabaseDb) -> None:
    # GET / is PostgREST's OpenAPI document, which carries its version.
    response = httpx.get(f"{supabase_db.postgrest.url}/", headers=auth(supabase_db.service_key))
    assert response.status_code == 200
    assert response.json()["info"]["version"] == POSTGREST_VERSION
    assert {"/clips", "/clip_thumbnails", "/job_events"} <= set(response.json()["paths"])


def test_postgrest_sees_ddl_without_a_restart(supabase_db: SupabaseDb) -> None:
    # supabase_roles.sql's event triggers NOTIFY PostgREST, as on Supabase: no restart between migrations.
    # PostgREST 12 answers GETs on tables it has not cached, but not writes, nor its OpenAPI listing.
    table = f"ddl_probe_{secrets.token_hex(4)}"
    psql, url, headers = supabase_db.postgres.psql, supabase_db.postgrest.url, auth(supabase_db.service_key)
    psql(f"create table public.{table} (id int)", user="postgres")
    try:
        deadline = time.monotonic() + 10
        while f"/{table}" not in httpx.get(f"{url}/", headers=headers).json()["paths"]:
            assert time.monotonic() < deadline, "PostgREST did not reload its schema cache"
            time.sleep(0.05)
        assert httpx.post(f"{url}/{table}", headers=headers, json={"id": 1}).status_code == 201
    finally:
        psql(f"drop table public.{table}", user="postgres")
