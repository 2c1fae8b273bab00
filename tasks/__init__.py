"""Prefect tasks: thin shells around clipgen functions. Retry policy lives here.

Who retries what, and how much. Each request has one owner of its retries; a decision reads the error's
type (`clipgen.errors.is_retryable`: a TransientError), never its message.

1. A clip attempt: `tasks/clips.py`, the decorator of `generate_clip` (with the worker's backoff put in by
   `clip_task`, the only copy). 3 attempts; the waits between them are B, then 2B, each with up to 50 %
   jitter, B = VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS (2 s). Only a TransientError is retried. Each attempt
   resumes from what is recorded (the file kept in the work directory, the prediction ledger), so nothing
   paid is paid again.
2. In place, inside one attempt: `clipgen/retrying.py`, for cheap requests that may be repeated safely.
   - an output's download (clipgen/providers/replicate.py): 3 tries, 0.5 s then 1 s apart;
   - a cancel (clipgen/paid_work.py): 3 tries, 0.5 s then 1 s;
   - each Supabase request but an upload (clipgen/stores/supabase.py): 3 tries, 0.5 s then 1 s, on 429,
     5xx and connection failures only;
   - a ledger write the store has not retried itself (the local store's SQLite): 3 tries, 0.2 s then 0.4 s.
   What one of these gives up on fails the attempt, and (1) may run the attempt again: a small request can
   be sent up to 3 x 3 times in all. They are idempotent and carry no video.
3. Uploads of a clip or thumbnail: sent once per attempt; their retries are (1)'s, so a Storage outage
   meets at most 3 uploads of a clip (it was 3 x 3 when the store retried them too).
4. A create answered 429 (clipgen/providers/replicate.py `_create`, clipgen/throttle.py): it made nothing,
   so it is sent again after the API's reset hint, as long as the waits stay within 60 s
   (`max_rate_limit_wait_s`); past that the attempt fails with the hint, for (1).
5. A queued job (flows/job_queue.py, clipgen/queueing.py): a failed run of the job is claimed again, up to
   VIDEO_GENERATOR_QUEUE_MAX_ATTEMPTS claims, VIDEO_GENERATOR_QUEUE_RETRY_DELAY_SECONDS apart; input refused
   and permanent errors are not retried. A rerun reuses every clip already stored.
6. Thumbnails: `generate_thumbnail`, 2 attempts, no delay (nothing paid).

Nothing else retries: the local store waits for SQLite's lock (its busy timeout) and raises.
"""
