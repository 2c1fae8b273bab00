-- video-generator: the durable job queue (clipgen/stores/queue.py).
--
-- Self-contained and idempotent, like the first migration: applies after it and can be applied again.
-- Only the service role reads, writes or calls the functions (RLS on, no policies, nothing for
-- anon/authenticated).
--
-- One row per job. Any app holding the service key queues a job with a plain insert; every other column
-- has a default (queued, available now, 3 attempts):
--   insert into public.video_jobs (job_id, job) values (gen_random_uuid(), '{"clip_prompts": [...]}');
--   insert into public.video_jobs (job_id, job, options, max_attempts)
--     values ('7c9e6679-7425-40de-944b-e07fc1f90ae7', '{"clip_prompts": [...]}', '{"model": "veo-3.1"}', 5);
-- (or through PostgREST: POST /rest/v1/video_jobs {"job_id": ..., "job": {...}}). The worker validates the
-- job when it claims it, not here. Queueing a job again (after it finished, or to replace a queued one's
-- job) goes through enqueue_video_job, which refuses a job that is running under a live lease.
--
-- Workers claim jobs with claim_video_job (oldest first, `for update skip locked`, so concurrent workers
-- never get the same row), renew their lease with renew_video_job and record the end with
-- finish_video_job. Each claim carries a fresh claim_token; only the current token may renew or finish.

create table if not exists public.video_jobs (
    job_id uuid primary key,
    job jsonb not null check (jsonb_typeof(job) = 'object'),
    options jsonb check (options is null or jsonb_typeof(options) = 'object'),
    status text not null default 'queued' check (status in ('queued', 'running', 'succeeded', 'failed')),
    attempts integer not null default 0 check (attempts >= 0),
    max_attempts integer not null default 3 check (max_attempts > 0),
    available_at timestamptz not null default now(),
    claim_token uuid,
    claimed_by text,
    claimed_at timestamptz,
    lease_expires_at timestamptz,
    last_error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- The claim's scan: only rows that may become claimable, in claim order.
create index if not exists video_jobs_claimable_idx on public.video_jobs (created_at, job_id)
    where status in ('queued', 'running');

-- Queue a job, or queue it again: a fresh start (attempts 0, available now, no error, no claim) that keeps
-- created_at. Refused with SQLSTATE VJ001 while the job is running under a live lease.
create or replace function public.enqueue_video_job(
    p_job_id uuid, p_job jsonb, p_options jsonb, p_max_attempts integer
)
returns setof public.video_jobs
language plpgsql
security invoker
set search_path = ''
as $$
declare
    existing public.video_jobs;
begin
    loop
        return query
            insert into public.video_jobs as j (job_id, job, options, max_attempts)
            values (p_job_id, p_job, p_options, coalesce(p_max_attempts, 3))
            on conflict (job_id) do nothing
            returning j.*;
        if found then
            return;
        end if;
        select * into existing from public.video_jobs j where j.job_id = p_job_id for update;
        exit when found;  -- else it was deleted since the insert: try the insert again
    end loop;
    if existing.status = 'running' and existing.lease_expires_at >= now() then
        raise exception using
            errcode = 'VJ001',
            message = format(
                'job %s is running (claimed by %s, lease expires at %s); queue it again once it has finished',
                p_job_id, existing.claimed_by, existing.lease_expires_at
            );
    end if;
    return query
        update public.video_jobs j
           set job = p_job, options = p_options, max_attempts = coalesce(p_max_attempts, 3),
               status = 'queued', attempts = 0, available_at = now(), claim_token = null, claimed_by = null,
               claimed_at = null, lease_expires_at = null, last_error = null, updated_at = now()
         where j.job_id = p_job_id
        returning j.*;
end;
$$;

-- Take the oldest claimable job (none: no row). First fails the expired claims that have no attempts left,
-- so they stop being handed out. Rows another transaction holds are skipped, never waited for.
create or replace function public.claim_video_job(p_worker text, p_lease_seconds double precision)
returns setof public.video_jobs
language plpgsql
security invoker
set search_path = ''
as $$
declare
    picked uuid;
begin
    update public.video_jobs j
       set status = 'failed',
           last_error = format('abandoned: lease expired after %s attempts', j.attempts),
           claim_token = null, lease_expires_at = null, updated_at = now()
     where j.job_id in (
        select a.job_id from public.video_jobs a
         where a.status = 'running' and a.lease_expires_at < now() and a.attempts >= a.max_attempts
           for update skip locked
     );

    select c.job_id into picked
      from public.video_jobs c
     where c.status in ('queued', 'running')
       and ((c.status = 'queued' and c.available_at <= now())
            or (c.status = 'running' and c.lease_expires_at < now()))
       and c.attempts < c.max_attempts
     order by c.created_at, c.job_id
     limit 1
       for update skip locked;
    if picked is null then
        return;
    end if;

    return query
        update public.video_jobs j
           set status = 'running', attempts = j.attempts + 1, claim_token = gen_random_uuid(),
               claimed_by = p_worker, claimed_at = now(),
               lease_expires_at = now() + make_interval(secs => p_lease_seconds), updated_at = now()
         where j.job_id = picked
        returning j.*;
end;
$$;

-- Extend the lease, if the token still holds the claim.
create or replace function public.renew_video_job(p_job_id uuid, p_token uuid, p_lease_seconds double precision)
returns boolean
language plpgsql
security invoker
set search_path = ''
as $$
begin
    update public.video_jobs j
       set lease_expires_at = now() + make_interval(secs => p_lease_seconds), updated_at = now()
     where j.job_id = p_job_id and j.status = 'running' and j.claim_token = p_token;
    return found;
end;
$$;

-- Record the end of a claim, if the token still holds it; returns the new status (null: it did not hold).
-- A failure with a retry delay is queued again while attempts are left; claimed_by/claimed_at stay.
create or replace function public.finish_video_job(
    p_job_id uuid, p_token uuid, p_succeeded boolean, p_error text, p_retry_after_seconds double precision
)
returns text
language plpgsql
security invoker
set search_path = ''
as $$
declare
    new_status text;
begin
    update public.video_jobs j
       set status = case
               when p_succeeded then 'succeeded'
               when p_retry_after_seconds is not null and j.attempts < j.max_attempts then 'queued'
               else 'failed'
           end,
           available_at = case
               when not p_succeeded and p_retry_after_seconds is not null and j.attempts < j.max_attempts
                   then now() + make_interval(secs => greatest(p_retry_after_seconds, 0))
               else j.available_at
           end,
           last_error = p_error, claim_token = null, lease_expires_at = null, updated_at = now()
     where j.job_id = p_job_id and j.status = 'running' and j.claim_token = p_token
    returning j.status into new_status;
    return new_status;
end;
$$;

alter table public.video_jobs enable row level security;

-- Supabase grants new public tables and functions to anon and authenticated by default; take that back.
revoke all on table public.video_jobs from anon, authenticated;
grant select, insert, update, delete on table public.video_jobs to service_role;
revoke all on function public.enqueue_video_job(uuid, jsonb, jsonb, integer) from public, anon, authenticated;
revoke all on function public.claim_video_job(text, double precision) from public, anon, authenticated;
revoke all on function public.renew_video_job(uuid, uuid, double precision) from public, anon, authenticated;
revoke all on function public.finish_video_job(uuid, uuid, boolean, text, double precision)
    from public, anon, authenticated;
grant execute on function public.enqueue_video_job(uuid, jsonb, jsonb, integer) to service_role;
grant execute on function public.claim_video_job(text, double precision) to service_role;
grant execute on function public.renew_video_job(uuid, uuid, double precision) to service_role;
grant execute on function public.finish_video_job(uuid, uuid, boolean, text, double precision) to service_role;
