-- video-generator: the prediction ledger, and the plan each stored clip was made for.
--
-- Every paid request (a Replicate prediction) gets a row the moment it exists, before any waiting, so a retry,
-- a rerun or a run after a crash adopts it instead of paying again, and whatever is still running when a
-- run ends or is cancelled can be found and cancelled. Idempotent, like the other migrations.

create table if not exists public.clip_predictions (
    id bigint generated always as identity primary key,
    prediction_id text not null unique,
    job_id uuid not null,
    clip_index integer not null check (clip_index >= 0),
    provider text not null,
    model text not null,
    plan_fingerprint text not null,
    run_id text,
    status text not null default 'created'
        check (status in ('created', 'delivered', 'rejected', 'unused', 'failed', 'canceled')),
    cost double precision not null default 0,
    error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create index if not exists clip_predictions_job_id_id_idx on public.clip_predictions (job_id, id);

-- A stored clip is reused by a rerun only when it was made for the same plan.
alter table public.clips add column if not exists plan_fingerprint text;

alter table public.clip_predictions enable row level security;
revoke all on table public.clip_predictions from anon, authenticated;
revoke all on sequence public.clip_predictions_id_seq from anon, authenticated;
grant select, insert, update, delete on table public.clip_predictions to service_role;
