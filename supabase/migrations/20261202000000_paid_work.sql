-- video-generator: one owner of paid work.
--
-- Clip leases: before a run works a clip it takes the clip's lease (owner run, expiry) with one conditional
-- write, so two runs of one job never pay for the same clip at once. A run that dies stops renewing; once the
-- lease expires another run takes the clip over.
--
-- The ledger as the one record of paid requests: before each create a run reserves the price as an
-- 'intended' row, refused when the job's committed spend would pass its budget; the provider's answer turns
-- the intent into the prediction (resolve_prediction_intent). That replaces the clips.create_sent_at marker
-- of 20261121030000_clip_create_intents.sql. The statuses (clipgen/stores/base.py, PredictionStatus):
-- intended, void, created, succeeded, delivered, rejected, abandoned, failed, canceled ('unused' is now
-- 'abandoned').
--
-- Times are the database's (now()), so runs on machines with skewed clocks agree on leases. Idempotent, like
-- the other migrations: applies after them and can be applied again.

alter table public.clips add column if not exists lease_owner text;
alter table public.clips add column if not exists lease_expires_at timestamptz;
alter table public.clips add column if not exists metadata jsonb not null default '{}'::jsonb;
alter table public.clips add column if not exists failed_for_good boolean not null default false;
alter table public.clips drop column if exists create_sent_at;

alter table public.clip_predictions drop constraint if exists clip_predictions_status_check;
update public.clip_predictions set status = 'abandoned' where status = 'unused';
alter table public.clip_predictions add constraint clip_predictions_status_check check (status in (
    'intended', 'void', 'created', 'succeeded', 'delivered', 'rejected', 'abandoned', 'failed', 'canceled'
));

-- Take the clip's lease for p_owner when it is free, expired or already p_owner's (then renewed), inserting
-- the clip's row (running, p_model, no attempts) when there is none; true when p_owner holds it after. One
-- statement: concurrent callers serialize on the row (on conflict locks it and re-checks the condition
-- against the latest version), so exactly one of them takes a free lease. Only the lease columns change on an
-- existing row.
create or replace function public.take_clip_lease(
    p_job_id uuid, p_clip_index integer, p_owner text, p_seconds double precision, p_model text
)
returns boolean
language sql
security invoker
set search_path = ''
as $$
    with taken as (
        insert into public.clips as c (job_id, clip_index, status, model, attempts, lease_owner, lease_expires_at)
        values (p_job_id, p_clip_index, 'running', p_model, 0, p_owner, now() + make_interval(secs => p_seconds))
        on conflict (job_id, clip_index) do update
           set lease_owner = excluded.lease_owner, lease_expires_at = excluded.lease_expires_at
         where c.lease_owner is null or c.lease_owner = excluded.lease_owner or c.lease_expires_at < now()
        returning 1
    )
    select exists (select 1 from taken);
$$;

-- Extend the lease while p_owner holds it; an expired lease nobody has taken over still counts as held.
create or replace function public.renew_clip_lease(
    p_job_id uuid, p_clip_index integer, p_owner text, p_seconds double precision
)
returns boolean
language plpgsql
security invoker
set search_path = ''
as $$
begin
    update public.clips c
       set lease_expires_at = now() + make_interval(secs => p_seconds)
     where c.job_id = p_job_id and c.clip_index = p_clip_index and c.lease_owner = p_owner;
    return found;
end;
$$;

-- Give the lease up if p_owner holds it; a no-op otherwise.
create or replace function public.release_clip_lease(p_job_id uuid, p_clip_index integer, p_owner text)
returns void
language sql
security invoker
set search_path = ''
as $$
    update public.clips c
       set lease_owner = null, lease_expires_at = null
     where c.job_id = p_job_id and c.clip_index = p_clip_index and c.lease_owner = p_owner;
$$;

-- Insert p_record (a clip_predictions row as JSON, status 'intended') unless the job's committed spend plus
-- its cost would pass p_budget_usd (null: no limit); false when it would. Committed spend is the cost of every
-- row of the job but void ones. One reservation per job at a time (a transaction-scoped advisory lock on the
-- job), so two runs cannot both take what is left; the sum is read after the lock is held, and under read
-- committed it sees every reservation committed before. A call repeated after a lost response finds its row
-- and answers true again instead of reserving twice.
create or replace function public.reserve_prediction(p_record jsonb, p_budget_usd double precision)
returns boolean
language plpgsql
security invoker
set search_path = ''
as $$
declare
    rec public.clip_predictions := jsonb_populate_record(null::public.clip_predictions, p_record);
    committed double precision;
begin
    perform pg_advisory_xact_lock(hashtextextended('reserve_prediction:' || rec.job_id::text, 0));
    if exists (select 1 from public.clip_predictions p where p.prediction_id = rec.prediction_id) then
        return true;
    end if;
    if p_budget_usd is not null then
        select coalesce(sum(p.cost), 0) into committed
          from public.clip_predictions p
         where p.job_id = rec.job_id and p.status <> 'void';
        -- The same slack as the local store: a budget of exactly n reservations is not refused the nth by
        -- a rounding error in the sum.
        if committed + coalesce(rec.cost, 0) > p_budget_usd + 1e-9 then
            return false;
        end if;
    end if;
    insert into public.clip_predictions (
        prediction_id, job_id, clip_index, provider, model, plan_fingerprint, run_id, status, cost, error,
        created_at, updated_at
    ) values (
        rec.prediction_id, rec.job_id, rec.clip_index, rec.provider, rec.model, rec.plan_fingerprint,
        rec.run_id, rec.status, coalesce(rec.cost, 0), rec.error, coalesce(rec.created_at, now()), now()
    );
    return true;
end;
$$;

-- The intent row p_intent_id becomes p_record (the real prediction id, status and cost), keeping the row's id
-- (its place on the ledger) and created_at. When there is no such row, or p_record's prediction is on the
-- ledger already (an earlier call committed, or another writer recorded it), p_record is upserted and the
-- intent row removed. Safe to repeat: a second call finds the prediction recorded and the intent gone.
create or replace function public.resolve_prediction_intent(p_intent_id text, p_record jsonb)
returns void
language plpgsql
security invoker
set search_path = ''
as $$
declare
    rec public.clip_predictions := jsonb_populate_record(null::public.clip_predictions, p_record);
begin
    if p_intent_id <> rec.prediction_id
       and not exists (select 1 from public.clip_predictions p where p.prediction_id = rec.prediction_id) then
        update public.clip_predictions p
           set prediction_id = rec.prediction_id, job_id = rec.job_id, clip_index = rec.clip_index,
               provider = rec.provider, model = rec.model, plan_fingerprint = rec.plan_fingerprint,
               run_id = rec.run_id, status = rec.status, cost = coalesce(rec.cost, 0), error = rec.error,
               updated_at = now()
         where p.prediction_id = p_intent_id;
        if found then
            return;
        end if;
    end if;
    insert into public.clip_predictions as p (
        prediction_id, job_id, clip_index, provider, model, plan_fingerprint, run_id, status, cost, error,
        created_at, updated_at
    ) values (
        rec.prediction_id, rec.job_id, rec.clip_index, rec.provider, rec.model, rec.plan_fingerprint,
        rec.run_id, rec.status, coalesce(rec.cost, 0), rec.error, coalesce(rec.created_at, now()), now()
    )
    on conflict (prediction_id) do update
       set job_id = excluded.job_id, clip_index = excluded.clip_index, provider = excluded.provider,
           model = excluded.model, plan_fingerprint = excluded.plan_fingerprint, run_id = excluded.run_id,
           status = excluded.status, cost = excluded.cost, error = excluded.error,
           updated_at = excluded.updated_at;
    if p_intent_id <> rec.prediction_id then
        delete from public.clip_predictions p where p.prediction_id = p_intent_id;
    end if;
end;
$$;

-- Supabase grants new functions to anon and authenticated by default; take that back.
revoke all on function public.take_clip_lease(uuid, integer, text, double precision, text)
    from public, anon, authenticated;
revoke all on function public.renew_clip_lease(uuid, integer, text, double precision)
    from public, anon, authenticated;
revoke all on function public.release_clip_lease(uuid, integer, text) from public, anon, authenticated;
revoke all on function public.reserve_prediction(jsonb, double precision) from public, anon, authenticated;
revoke all on function public.resolve_prediction_intent(text, jsonb) from public, anon, authenticated;
grant execute on function public.take_clip_lease(uuid, integer, text, double precision, text) to service_role;
grant execute on function public.renew_clip_lease(uuid, integer, text, double precision) to service_role;
grant execute on function public.release_clip_lease(uuid, integer, text) to service_role;
grant execute on function public.reserve_prediction(jsonb, double precision) to service_role;
grant execute on function public.resolve_prediction_intent(text, jsonb) to service_role;
