"""Which paid requests in a job's prediction ledger nobody will adopt, and stopping them.

A run adopts, per clip, the newest open prediction made for the same plan (pipeline.produce_clip). Everything
else that is still open costs money for nothing:
- at the start of a run: predictions for clips already stored, for another plan (the job was changed), or for
  clips no longer in the job;
- at the end of a run (or when it is cancelled or crashes): this run's own open predictions, and those left
  by runs before it, which it had its chance to adopt. Predictions opened after this run started by another
  run are left alone: that run may still be alive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from clipgen.providers.base import VideoProvider
from clipgen.stores.base import ClipStore, PredictionRecord, PredictionStatus

log = logging.getLogger(__name__)

OPEN: PredictionStatus = "created"
# How a provider's final status maps onto the ledger once we have stopped caring about a prediction.
_ENDED_AS: dict[str, PredictionStatus] = {"succeeded": "unused", "failed": "failed", "canceled": "canceled"}


def stale_at_start(
    ledger: Iterable[PredictionRecord], fingerprints: dict[int, str], stored: set[int]
) -> list[PredictionRecord]:
    """Open predictions no clip of the planned job will adopt. `fingerprints` is the plan's, by clip index;
    `stored` the clips already stored for that plan."""
    return [
        p
        for p in ledger
        if p.status == OPEN
        and (p.clip_index in stored or fingerprints.get(p.clip_index) != p.plan_fingerprint)
    ]


def left_at_end(
    ledger: Iterable[PredictionRecord], run_id: str, run_started: datetime | None
) -> list[PredictionRecord]:
    """Open predictions this run made, or that earlier runs left and this one did not take over."""
    return [
        p
        for p in ledger
        if p.status == OPEN
        and (
            p.run_id == run_id
            or (run_started is not None and p.created_at is not None and p.created_at < run_started)
        )
    ]


def cancel_predictions(
    store: ClipStore, provider: VideoProvider, predictions: Iterable[PredictionRecord], reason: str
) -> list[PredictionRecord]:
    """Cancel each one on the provider and record how it ended. Best effort, one by one: a failure is
    logged and the prediction stays open in the ledger for the next run to settle."""
    settled = []
    for prediction in predictions:
        try:
            ended = provider.cancel(prediction.prediction_id)
            status = _ENDED_AS.get(ended or "", "canceled")
            update = {"status": status, "error": prediction.error or reason}
            record = prediction.model_copy(update=update)
            store.record_prediction(record)
            settled.append(record)
            log.info(
                "prediction %s of clip %d: %s (%s)",
                prediction.prediction_id,
                prediction.clip_index,
                status,
                reason,
            )
        except Exception:
            log.warning(
                "could not cancel prediction %s; it stays on the ledger",
                prediction.prediction_id,
                exc_info=True,
            )
    return settled
