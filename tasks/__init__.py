"""Prefect tasks: thin shells around clipgen functions. Retry policy lives here.

Who retries what, and how much. Each failure has one retrying layer, the nearest that can stand in for the
call: a layer never retries what a layer above it retries (clipgen/retrying.py enforces it). A decision
reads the error's type (`clipgen.errors.is_retryable`: a TransientError), never its message.

1. A clip attempt: `tasks/clips.py`, the decorator of `generate_clip` (with the worker's backoff put in by
   `clip_task`, the only copy). 3 attempts; the waits between them are B, then 2B, each with up to 50 %
   jitter, B = VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS (2 s). Only a TransientError is retried. Each attempt
   resumes from what is recorded (the file kept in the work directory, the prediction ledger), so nothing
   paid is paid again.
2. A thumbnail: `generate_thumbnail`, 2 attempts, no delay (nothing paid).
3. Inside one attempt of (1) or (2), nothing retries in place: every store request (a read, a record, an
   event, a lease, a signed link, an upload) is sent once per attempt, and the task's attempts are its
   retries: 3 sends at most for a clip's request, 2 for a thumbnail's (it was 3 x 3 = 9 when the store
   retried in place as well). Except three calls, which keep their tries (`retry_inside_attempt`):
   - a ledger write (clipgen/paid_work.py: the record of a create just paid for, and each later status),
     which a new attempt cannot redo: 3 tries, 0.2 s then 0.4 s, on any error but a store's refusal
     (StoreRefused); the store's request inside is sent once per try;
   - a cancel (clipgen/paid_work.py), which a new attempt cannot redo either: 3 tries, 0.5 s then 1 s;
   - a paid output's download (clipgen/providers/replicate.py), the one call that stacks on (1), on
     purpose: 3 tries, 0.5 s then 1 s, so up to 3 x 3 free GETs of the output during an outage of its
     host. Sent once per attempt, three failed GETs would lose a paid clip to the run.
4. Outside any attempt, where nothing above retries (serve and the job page, the CLI, the queue worker's
   enqueue, claim, renew and finish, the flow's own reads and events, a clip lease renewed by its keeper
   thread): a small store request (not an upload) gets 3 tries in place, 0.5 s then 1 s, on 429, 5xx and
   connection failures only (clipgen/stores/supabase.py through clipgen/retrying.py). An upload is sent
   once everywhere.
5. A create answered 429 (clipgen/providers/replicate.py `_create`, clipgen/throttle.py): it made nothing,
   so it is sent again after the API's reset hint, as long as the waits stay within 60 s
   (`max_rate_limit_wait_s`); past that the attempt fails with the hint, for (1).
6. A queued job (flows/job_queue.py, clipgen/queueing.py): a failed run of the job is claimed again, up to
   VIDEO_GENERATOR_QUEUE_MAX_ATTEMPTS claims, VIDEO_GENERATOR_QUEUE_RETRY_DELAY_SECONDS apart; input refused
   and permanent errors are not retried. This reruns the whole job, not a request: it reuses every clip
   already stored and pays for nothing again.

Nothing else retries: the local store waits for SQLite's lock (its busy timeout) and raises.
"""
