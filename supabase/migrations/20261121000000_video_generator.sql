-- video-generator: clip records, thumbnails and the replayable progress log.
--
-- Self-contained and idempotent: applies to an empty Supabase project and can be applied again.
-- Only the service role reads or writes (RLS on, no policies, no grants to anon/authenticated): the flow
-- writes with SUPABASE_SERVICE_ROLE_KEY, and apps read through our server, which signs links.
--
-- Jobs: rows carry `job_id` (the job's UUID) without a foreign key, so this applies to any project. A project
-- that already has a `jobs` table keyed by the same UUID can add, for each table:
--   alter table public.clips add constraint clips_job_fk
--     foreign key (job_id) references public.jobs (id) on delete cascade;

create table if not exists public.clips (
    id bigint generated always as identity primary key,
    job_id uuid not null,
    clip_index integer not null check (clip_index >= 0),
    status text not null check (status in ('running', 'success', 'failed')),
    model text not null,
    prediction_id text,
    attempts integer not null default 0,
    requested_duration double precision,
    target_duration double precision,
    actual_duration double precision,
    width integer,
    height integer,
    fps double precision,
    video_path text,
    cost double precision not null default 0,
    error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (job_id, clip_index)
);

create table if not exists public.clip_thumbnails (
    id bigint generated always as identity primary key,
    job_id uuid not null,
    clip_index integer not null check (clip_index >= 0),
    thumbnail_path text not null,
    thumbnail_url text not null,
    created_at timestamptz not null default now(),
    unique (job_id, clip_index)
);

create table if not exists public.job_events (
    id bigint generated always as identity primary key,
    job_id uuid not null,
    event text not null,
    data jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now()
);

-- The reads we do: a job's clips and thumbnails (covered by the unique keys), its events after an id.
create index if not exists job_events_job_id_id_idx on public.job_events (job_id, id);

-- Appending to a job's log. Readers follow it with `id > last seen`, so ids must become visible in order;
-- identity values are handed out at insert and could commit out of order between concurrent writers. One
-- writer per job at a time (a transaction-scoped advisory lock) makes commit order equal id order.
create or replace function public.append_job_event(p_job_id uuid, p_event text, p_data jsonb)
returns bigint
language plpgsql
security invoker
set search_path = ''
as $$
declare
    new_id bigint;
begin
    perform pg_advisory_xact_lock(hashtextextended(p_job_id::text, 0));
    insert into public.job_events (job_id, event, data) values (p_job_id, p_event, p_data)
    returning id into new_id;
    return new_id;
end;
$$;

alter table public.clips enable row level security;
alter table public.clip_thumbnails enable row level security;
alter table public.job_events enable row level security;

-- Supabase grants new public tables to anon and authenticated by default; take that back.
revoke all on table public.clips, public.clip_thumbnails, public.job_events from anon, authenticated;
revoke all on sequence public.clips_id_seq, public.clip_thumbnails_id_seq, public.job_events_id_seq
    from anon, authenticated;
grant select, insert, update, delete on table public.clips, public.clip_thumbnails, public.job_events
    to service_role;
revoke all on function public.append_job_event(uuid, text, jsonb) from public, anon, authenticated;
grant execute on function public.append_job_event(uuid, text, jsonb) to service_role;
