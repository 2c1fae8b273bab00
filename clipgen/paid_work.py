"""Paid work has one owner: this module. It alone decides what is created, adopted, settled or canceled.
Two parts of it have modules of their own: the clip's lease (clipgen/clip_lease.py) and the plan's
fingerprint that ledger rows, stored clips and kept files are matched by (clipgen/plan_fingerprint.py).

Every paid request is a row of the job's prediction ledger (the store's `clip_predictions`) from before it
is sent until it ends, and its status only moves forward through one state machine
(clipgen/prediction_states.py): intended -> created -> succeeded -> delivered, and the ends on the way.

- `intended` is written before the create leaves, with its price reserved against the job's budget in the
  same atomic write (`ClipStore.reserve_prediction`): a process that dies while the create is under way
  leaves the intent, and the next attempt, on any machine, looks for what that create made before paying
  again. Two runs of a job share one budget, because it is the ledger's.
- `succeeded` stays adoptable by any worker until its output expires: a clip whose upload failed is not
  paid for again.
- A clip is worked by one run at a time: the run holds the clip's lease (`ClipWork.hold`), renewed while
  it works. A second run of the job waits for it and then reuses what the first stored.
- A run cancels only predictions that it made, or that earlier runs left, and that no live lease of
  another run holds.
- A prediction in flight holds a slot (`ClipWork.in_flight`): one of the run's `concurrency` and one of the
  global prediction limit, from just before its create until it ends. Downloading, probing and storing its
  output, and waiting out a retry's backoff, hold none, so the slots bound what runs and bills at Replicate.

Retries here (clipgen.retrying; budgets in tasks/__init__.py): a cancel and a ledger write, a few tries in
place even inside a clip attempt, because the clip task's retry cannot stand in for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID, uuid4

from clipgen.clip_lease import ClipLease, held_elsewhere
from clipgen.errors import BudgetExceeded, ClipTakenOver, RunStopped, StoreError, TransientError
from clipgen.plan_fingerprint import plan_fingerprint
from clipgen.planning import ClipPlan
from clipgen.prediction_states import ADOPTABLE, NOT_BILLED, billed, committed, ended_status, moved
from clipgen.providers.base import Intent, RemoteStatus, VideoProvider
from clipgen.retrying import retried
from clipgen.stores.base import INTENT_PREFIX, ClipRecord, ClipStore, PredictionRecord, PredictionStatus

log = logging.getLogger(__name__)

LEDGER_WRITE_ATTEMPTS = 3
CANCEL_ATTEMPTS = 3


@dataclass(frozen=True)
class Spend:
    this_run: float
    all_runs: float


SlotFactory = Callable[[], AbstractContextManager[object]]  # enters one slot of a shared limit


@dataclass
class JobWork:
    """One run's paid work on one job: the run's identity (the lease owner), its budget, its stop signal,
    and its slots for predictions in flight: `concurrency` of its own (None: no cap of its own) and, for
    each, one of `prediction_slot` (the global limit shared by every run and worker)."""

    store: ClipStore
    provider: VideoProvider
    owner: str
    budget_usd: float | None = None
    lease_seconds: float = 60.0
    retry_failed: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    concurrency: int | None = None
    prediction_slot: SlotFactory = nullcontext

    def __post_init__(self) -> None:
        self._cap = threading.BoundedSemaphore(self.concurrency) if self.concurrency else None

    def clip(self, plan: ClipPlan) -> ClipWork:
        return ClipWork(self, plan, plan_fingerprint(plan, self.provider.name))

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """A slot for one prediction: the run's first (a run waits for its own before taking one of the
        limit everyone shares), then the global limit's, which only paid predictions take (a free provider's
        generation, such as a local render, holds the run's slot alone)."""
        run_slot = ExitStack()
        if self._cap is not None:
            self._cap.acquire()
            run_slot.callback(self._cap.release)
        with run_slot, self.prediction_slot() if self.provider.paid else nullcontext():
            try:
                yield
            finally:
                # The run's slot goes back first: its next prediction then waits for a slot of the global
                # limit while this one's goes back (an API write), not after it. Closing twice is harmless.
                run_slot.close()

    def sweep_at_start(self, plans: list[ClipPlan]) -> list[PredictionRecord]:
        """Stop open predictions that no clip of this job will adopt: for a clip already stored, for another
        plan (the job was changed) or for a clip no longer in the job. Those of clips another run holds
        are that run's to settle."""
        fingerprints = {plan.clip_index: plan_fingerprint(plan, self.provider.name) for plan in plans}
        clips = self._clips(plans[0].job_id) if plans else {}
        stored = {
            index
            for index, record in clips.items()
            if record.status == "success" and record.plan_fingerprint == fingerprints.get(index)
        }
        stale = [
            p
            for p in self._ledger(plans[0].job_id if plans else None)
            if p.status in ADOPTABLE
            and not held_elsewhere(clips.get(p.clip_index), self.owner)
            and (p.clip_index in stored or fingerprints.get(p.clip_index) != p.plan_fingerprint)
        ]
        return self._stop_all(stale, "no clip of this job will use it", keep_succeeded=False)

    def settle_at_end(self, job_id: UUID, run_started: datetime | None) -> list[PredictionRecord]:
        """Cancel what is still running that this run made, or that earlier runs left and this one did
        not take over. Succeeded ones stay adoptable; a stopped run leaves all to the run that took over."""
        if self.stop.is_set():
            return []
        clips = self._clips(job_id)
        left = [
            p
            for p in self._ledger(job_id)
            if p.status == "created"
            and not held_elsewhere(clips.get(p.clip_index), self.owner)
            and (p.run_id == self.owner or _before(p.created_at, run_started))
        ]
        return self._stop_all(left, "the run ended without using it", keep_succeeded=True)

    def spend(self, job_id: UUID) -> Spend:
        """What this run and every run of the job committed: an unanswered create counts until a later
        attempt finds it made nothing, so each run's figure is final at its end."""
        ledger = self._ledger(job_id)
        return Spend(committed(p for p in ledger if p.run_id == self.owner), committed(ledger))

    # --- shared by the clips ----------------------------------------------------------------------

    def _ledger(self, job_id: UUID | None) -> list[PredictionRecord]:
        return self.store.predictions(job_id) if job_id is not None else []

    def _clips(self, job_id: UUID) -> dict[int, ClipRecord]:
        return {record.clip_index: record for record in self.store.clip_records(job_id)}

    def _stop_all(
        self, predictions: list[PredictionRecord], reason: str, keep_succeeded: bool
    ) -> list[PredictionRecord]:
        """Cancel each (best effort, one by one) and record how it ended."""
        settled = []
        for prediction in predictions:
            try:
                settled.append(self._stop_one(prediction, reason, keep_succeeded))
            except Exception:
                log.warning("could not stop prediction %s", prediction.prediction_id, exc_info=True)
        return settled

    def _stop_one(self, prediction: PredictionRecord, reason: str, keep_succeeded: bool) -> PredictionRecord:
        remote = (
            self.cancel_remote(prediction.prediction_id) if prediction.status == "created" else "succeeded"
        )
        status = ended_status(remote or "canceled", wanted=keep_succeeded)
        updated = moved(prediction, status, error=prediction.error or reason, remote=remote)
        self.store.record_prediction(updated)
        log.info(
            "prediction %s of clip %d: %s (%s)",
            prediction.prediction_id,
            prediction.clip_index,
            status,
            reason,
        )
        return updated

    def cancel_remote(self, prediction_id: str) -> RemoteStatus | None:
        """Cancel on the provider, a few tries in place (a cancel repeated is harmless); how it ended there
        (None: unknown)."""
        return retried(
            f"cancel of {prediction_id}",
            lambda: self.provider.cancel(prediction_id),
            retry_on=lambda exc: True,
            tries=CANCEL_ATTEMPTS,
            retry_inside_attempt=True,  # a later attempt does not cancel what this one left running
        )


def _before(moment: datetime | None, reference: datetime | None) -> bool:
    return moment is not None and reference is not None and moment < reference


class ClipWork:
    """One clip's paid work in one run: the lease, the ledger rows of its plan, and every transition.

    This is the `PaidWork` a provider is handed (clipgen.providers.base), and what the pipeline asks
    whether the clip is stored, failed for good, or what it cost.
    """

    def __init__(self, job: JobWork, plan: ClipPlan, fingerprint: str) -> None:
        self.job, self.plan, self.fingerprint = job, plan, fingerprint
        self._rows: dict[str, PredictionRecord] = {}
        self._known: frozenset[str] = frozenset()
        self._lease = ClipLease(job.store, plan, job.owner, job.lease_seconds, job.stop)
        self._lock = threading.Lock()

    # --- the lease (clipgen.clip_lease) ----------------------------------------------------------------

    @contextmanager
    def hold(self, keep_for: Callable[[BaseException], bool] = lambda exc: False) -> Iterator[None]:
        """Work the clip under its lease: wait while another run holds it, renew it while working, give it
        back at the end. The ledger is read again once the lease is ours: the last holder may have moved.

        After an error `keep_for` accepts (one this run will retry), the lease is kept, unrenewed, for the
        retry to take again: between attempts the clip and its predictions stay this run's.
        """
        with self._lease.held(keep_for):
            self.check()  # a run told to stop starts no clip
            self.refresh()
            yield

    def check(self) -> None:
        if self.job.stop.is_set():
            raise RunStopped(
                f"the run was told to stop; clip {self.plan.clip_index} is left to the run that took over"
            )
        if self._lease.lost.is_set():
            raise ClipTakenOver(f"another run took clip {self.plan.clip_index} over")

    # --- what the ledger and the clip's row say -------------------------------------------------------

    def refresh(self) -> None:
        """Read the job's ledger again: this clip's rows for this plan, and every id the job knows."""
        ledger = self.job.store.predictions(self.plan.job_id)
        with self._lock:
            self._known = frozenset(p.prediction_id for p in ledger)
            self._rows = {
                p.prediction_id: p
                for p in ledger
                if p.clip_index == self.plan.clip_index and p.plan_fingerprint == self.fingerprint
            }

    def record(self) -> ClipRecord | None:
        records = self.job.store.clip_records(self.plan.job_id)
        return next((r for r in records if r.clip_index == self.plan.clip_index), None)

    def stored(self, record: ClipRecord | None) -> bool:
        """Whether an earlier run stored this clip for this very plan."""
        return bool(
            record
            and record.status == "success"
            and record.video_path
            and record.plan_fingerprint == self.fingerprint
            and record.actual_duration is not None
        )

    def failed_for_good(self, record: ClipRecord | None) -> bool:
        """Whether an earlier attempt of this plan failed in a way another would repeat (and the user did
        not ask to try again)."""
        return bool(
            record
            and record.status == "failed"
            and record.failed_for_good
            and record.plan_fingerprint == self.fingerprint
            and not self.job.retry_failed
        )

    def cost(self) -> float:
        """What this plan's predictions of the clip cost, over every attempt and run."""
        with self._lock:
            return billed(self._rows.values())

    def prediction_ids(self) -> list[str]:
        with self._lock:
            return [p for p, r in self._rows.items() if r.status not in NOT_BILLED]

    # --- PaidWork: what a provider calls ------------------------------------------------------------

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        with self.job.in_flight():
            self.check()  # the run may have been told to stop while this clip waited for its slot
            yield

    def adoptable(self) -> list[str]:
        with self._lock:
            rows = [r for r in self._rows.values() if r.status in ADOPTABLE]
        # Succeeded first (only a download away), then the newest in flight.
        rows.sort(key=lambda r: (r.status != "succeeded", -(r.created_at or _EPOCH).timestamp()))
        return [r.prediction_id for r in rows]

    def lost_creates(self) -> list[Intent]:
        with self._lock:
            rows = [r for r in self._rows.values() if r.status == "intended"]
            known = self._known
        return [Intent(r.prediction_id, r.created_at or datetime.now(UTC), known) for r in rows]

    def intend(self) -> Intent:
        self.check()
        sent_at = datetime.now(UTC)
        intent = self._new_row(f"{INTENT_PREFIX}{uuid4()}", "intended", sent_at)
        if not self.job.store.reserve_prediction(intent, self.job.budget_usd):
            raise BudgetExceeded(
                f"clip {self.plan.clip_index} needs ${self.plan.estimated_cost:.2f}, which would take the "
                f"job past its budget of ${self.job.budget_usd:.2f} (counting every run's paid requests); "
                "not creating it"
            )
        with self._lock:
            self._rows[intent.prediction_id] = intent
            known = self._known
        return Intent(intent.prediction_id, sent_at, known)

    def created(self, intent_id: str, prediction_id: str) -> None:
        self._resolve(intent_id, prediction_id)

    def found(self, intent_id: str, prediction_id: str) -> None:
        log.warning(
            "the lost create of clip %d made prediction %s; adopting it", self.plan.clip_index, prediction_id
        )
        self._resolve(intent_id, prediction_id)

    def made_nothing(self, intent_id: str) -> None:
        self._move(intent_id, "void")

    def ended(self, prediction_id: str, status: RemoteStatus, error: str | None = None) -> None:
        self._move(prediction_id, ended_status(status, wanted=True), error=error, remote=status)

    def give_up(self, prediction_id: str, reason: str) -> None:
        remote = self.job.cancel_remote(prediction_id)
        self._move(
            prediction_id, ended_status(remote or "canceled", wanted=False), error=reason, remote=remote
        )

    # --- what the pipeline calls ---------------------------------------------------------------------

    def delivered(self, prediction_id: str | None) -> None:
        if prediction_id is not None:
            self._move(prediction_id, "delivered", error=None)

    def rejected(self, prediction_id: str | None, error: str) -> None:
        if prediction_id is not None:
            self._move(prediction_id, "rejected", error=error)

    # --- transitions ----------------------------------------------------------------------------------

    def _new_row(
        self, prediction_id: str, status: PredictionStatus, created_at: datetime
    ) -> PredictionRecord:
        return PredictionRecord(
            prediction_id=prediction_id,
            job_id=self.plan.job_id,
            clip_index=self.plan.clip_index,
            provider=self.job.provider.name,
            model=self.plan.model,
            plan_fingerprint=self.fingerprint,
            run_id=self.job.owner,
            status=status,
            cost=self.plan.estimated_cost,
            created_at=created_at,
        )

    def _resolve(self, intent_id: str, prediction_id: str) -> None:
        """The intent becomes the prediction it made. A prediction nothing records is canceled at once:
        no prediction may exist that nothing owns."""
        with self._lock:
            intent = self._rows.get(intent_id)
        # The run that sent the create keeps it on its bill, also when a later run finds what it made.
        row = (intent or self._new_row(intent_id, "intended", datetime.now(UTC))).model_copy(
            update={"prediction_id": prediction_id, "status": "created"}
        )
        try:
            _with_retries(
                f"record prediction {prediction_id}", lambda: self.job.store.resolve_intent(intent_id, row)
            )
        except Exception as exc:
            log.error("could not record prediction %s; canceling it so nothing runs unowned", prediction_id)
            self._cancel_unowned(prediction_id)
            # Transient: the intent is still on record, and the next attempt resolves it.
            raise TransientError(f"could not record prediction {prediction_id} (canceled it): {exc}") from exc
        with self._lock:
            self._rows.pop(intent_id, None)
            self._rows[prediction_id] = row
            self._known |= {prediction_id}

    def _cancel_unowned(self, prediction_id: str) -> None:
        try:
            self.job.cancel_remote(prediction_id)
        except Exception:
            log.error("could not cancel unrecorded prediction %s either", prediction_id, exc_info=True)

    def _move(
        self,
        prediction_id: str,
        status: PredictionStatus,
        *,
        error: str | None = None,
        remote: str | None = None,
    ) -> None:
        with self._lock:
            current = self._rows.get(prediction_id)
        if current is None:
            log.warning(
                "prediction %s is not one of clip %d's; not recording it as %s",
                prediction_id,
                self.plan.clip_index,
                status,
            )
            return
        if current.status == status:
            return
        updated = moved(current, status, error=error, remote=remote)
        _with_retries(
            f"record prediction {prediction_id} as {status}",
            lambda: self.job.store.record_prediction(updated),
        )
        with self._lock:
            self._rows[prediction_id] = updated


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _with_retries(what: str, write: Callable[[], object]) -> None:
    """A ledger write, tried again a few times even inside a clip attempt: losing it could mean paying twice.
    The store sends its request once per try here (clipgen/retrying.py); one it refused is not tried again."""
    retried(
        what,
        write,
        retry_on=lambda exc: not isinstance(exc, StoreError) or isinstance(exc, TransientError),
        tries=LEDGER_WRITE_ATTEMPTS,
        first_delay_s=0.2,
        retry_inside_attempt=True,
    )
