-- video-generator: the intent written before each paid create.
--
-- Replicate has no idempotency key. A process that dies after Replicate made a prediction but before its id
-- reached clip_predictions leaves a paid prediction nobody knows about. So before each create the clip's row
-- records when it was sent (create_sent_at), and the ledger write clears it: the next attempt that finds it
-- set looks among the provider's recent predictions for the one that create made (exactly our input, made
-- since then, on no ledger) and adopts it instead of paying again. Idempotent, like the other migrations.

alter table public.clips add column if not exists create_sent_at timestamptz;
