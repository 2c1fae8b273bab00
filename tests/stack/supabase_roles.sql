-- What a Supabase project's database holds before the project's own migrations run: the API roles,
-- the demoted `postgres` owner, the auth helpers, and the default privileges that hand every new table
-- in `public` to anon and authenticated (our migration has to take that back, and tests prove it does).
--
-- Condensed from supabase/postgres (migrations/db/init-scripts/*, migrations/db/migrations/*: initial
-- schema, auth schema, demote-postgres, alter_api_roles_for_inherit, grant_auth_roles_to_postgres,
-- set_authenticator_timeout, finer-postgrest-triggers). Left out: Supabase's other services (storage,
-- realtime, vault, graphql) and extensions Debian does not ship (pg-safeupdate, pgsodium).
--
-- Run as the bootstrap superuser (supabase_admin, as in Supabase's image), once per database:
--   psql -X -v ON_ERROR_STOP=1 -v password=... -f supabase_roles.sql
-- Roles are cluster-wide and created only when missing; everything else is idempotent.

\if :{?password}
\else
    do $$ begin raise exception 'supabase_roles.sql needs: psql -v password=... (for postgres and authenticator)'; end $$;
\endif

-- `postgres` is who runs migrations (Supabase CLI, dashboard). Supabase demotes it from superuser, so a
-- migration that needs superuser fails here as it would there. It owns the database, and through
-- pg_database_owner the `public` schema.
select 'create role postgres' where not exists (select from pg_roles where rolname = 'postgres') \gexec
alter role postgres nosuperuser createdb createrole login replication bypassrls password :'password';
select format('alter database %I owner to postgres', current_database()) \gexec
alter role postgres set search_path to "$user", public, extensions;

-- The API roles. PostgREST logs in as authenticator and switches to the JWT's `role` claim per request.
-- Created noinherit in 2021, switched to inherit in 2023: this is the current state.
select 'create role anon' where not exists (select from pg_roles where rolname = 'anon') \gexec
select 'create role authenticated' where not exists (select from pg_roles where rolname = 'authenticated') \gexec
select 'create role service_role' where not exists (select from pg_roles where rolname = 'service_role') \gexec
select 'create role authenticator' where not exists (select from pg_roles where rolname = 'authenticator') \gexec
alter role anon nologin inherit;
alter role authenticated nologin inherit;
-- service_role skips RLS entirely: the flow writes with the service key, and RLS has no policies.
alter role service_role nologin inherit bypassrls;
alter role authenticator login noinherit password :'password';
grant anon, authenticated, service_role to authenticator;
-- Lets `postgres` do `set role authenticated` in SQL tests, as on Supabase.
grant anon, authenticated, service_role to postgres;

alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';

-- Extensions live in their own schema, on every API role's search path through PostgREST's config.
create schema if not exists extensions;
create extension if not exists "uuid-ossp" with schema extensions;
create extension if not exists pgcrypto with schema extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;

-- The exposed schema, and the defaults that make every table a migration creates there readable and
-- writable by anon and authenticated unless the migration revokes it (RLS is the only other guard).
-- Supabase sets them for both roles that create tables there: postgres (migrations) and supabase_admin.
grant usage on schema public to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on sequences to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
    grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
    grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
    grant all on sequences to postgres, anon, authenticated, service_role;

-- auth: only the request helpers that RLS policies call. Claims arrive as PostgREST sets them:
-- `request.jwt.claims` (JSON, PostgREST 9+) or the older one-setting-per-claim `request.jwt.claim.*`.
create schema if not exists auth;
grant usage on schema auth to postgres, anon, authenticated, service_role;

create or replace function auth.uid() returns uuid language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email() returns text language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

create or replace function auth.jwt() returns jsonb language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

-- PostgREST reloads its schema cache when DDL runs, as on Supabase, so a migration applied while it is
-- up shows through the API without a restart.
create or replace function extensions.pgrst_ddl_watch() returns event_trigger language plpgsql as $$
declare
  cmd record;
begin
  for cmd in select * from pg_event_trigger_ddl_commands() loop
    if cmd.command_tag in (
      'CREATE SCHEMA', 'ALTER SCHEMA', 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE',
      'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'CREATE VIEW', 'ALTER VIEW',
      'CREATE MATERIALIZED VIEW', 'ALTER MATERIALIZED VIEW', 'CREATE FUNCTION', 'ALTER FUNCTION',
      'CREATE TRIGGER', 'CREATE TYPE', 'ALTER TYPE', 'CREATE RULE', 'COMMENT'
    ) and cmd.schema_name is distinct from 'pg_temp' then
      notify pgrst, 'reload schema';
    end if;
  end loop;
end $$;

create or replace function extensions.pgrst_drop_watch() returns event_trigger language plpgsql as $$
declare
  obj record;
begin
  for obj in select * from pg_event_trigger_dropped_objects() loop
    if obj.object_type in (
      'schema', 'table', 'foreign table', 'view', 'materialized view', 'function', 'trigger', 'type', 'rule'
    ) and obj.is_temporary is false then
      notify pgrst, 'reload schema';
    end if;
  end loop;
end $$;

drop event trigger if exists pgrst_ddl_watch;
create event trigger pgrst_ddl_watch on ddl_command_end execute procedure extensions.pgrst_ddl_watch();
drop event trigger if exists pgrst_drop_watch;
create event trigger pgrst_drop_watch on sql_drop execute procedure extensions.pgrst_drop_watch();
