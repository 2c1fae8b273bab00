"""A clip's lease, one part of paid work (clipgen.paid_work owns it): a clip is worked by one run at a time.

The run that holds the clip's lease in the store renews it while it works and gives it back at the end. A
run that finds the lease held waits for it; a run that loses it (it could not renew in time, and another
run took the clip over) is told so through `lost`, and the clip's paid work stops at its next step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from clipgen.errors import RunStopped
from clipgen.planning import ClipPlan
from clipgen.stores.base import ClipRecord, ClipStore

log = logging.getLogger(__name__)


class ClipLease:
    """One run's lease on one clip, `seconds` long, renewed every third of that while it is held."""

    def __init__(
        self, store: ClipStore, plan: ClipPlan, owner: str, seconds: float, stop: threading.Event
    ) -> None:
        self._store, self._plan, self._owner, self._seconds, self._stop = store, plan, owner, seconds, stop
        self.lost = threading.Event()

    @contextmanager
    def held(self, keep_for: Callable[[BaseException], bool]) -> Iterator[None]:
        """Take the lease (waiting while another run holds it), renew it while the block runs, give it back
        after. After an error `keep_for` accepts, it is kept, unrenewed, for a retry to take again."""
        self._take()
        self.lost.clear()
        done = threading.Event()
        keeper = threading.Thread(target=self._keep, args=(done,), daemon=True)
        keeper.start()
        keep = False
        try:
            yield
        except BaseException as exc:
            keep = keep_for(exc)
            raise
        finally:
            done.set()
            keeper.join()
            if not keep:
                self._release()

    def _take(self) -> None:
        plan = self._plan
        waited = False
        while not self._store.take_clip_lease(
            plan.job_id, plan.clip_index, self._owner, self._seconds, plan.model
        ):
            if not waited:
                log.info("clip %d is being worked by another run; waiting for it", plan.clip_index)
                waited = True
            if self._stop.wait(min(2.0, max(0.2, self._seconds / 20))):
                raise RunStopped(f"the run was stopped while clip {plan.clip_index} waited for another run")

    def _keep(self, done: threading.Event) -> None:
        plan = self._plan
        while not done.wait(self._seconds / 3):
            try:
                held = self._store.renew_clip_lease(plan.job_id, plan.clip_index, self._owner, self._seconds)
            except Exception:
                log.warning("could not renew the lease on clip %d", plan.clip_index, exc_info=True)
                continue
            if not held:
                log.error("lost the lease on clip %d; another run may take it over", plan.clip_index)
                self.lost.set()
                return

    def _release(self) -> None:
        try:
            self._store.release_clip_lease(self._plan.job_id, self._plan.clip_index, self._owner)
        except Exception:
            log.warning("could not release the lease on clip %d", self._plan.clip_index, exc_info=True)


def held_elsewhere(record: ClipRecord | None, owner: str) -> bool:
    """Whether the clip's row shows a live lease of a run other than `owner`."""
    return bool(
        record
        and record.lease_owner not in (None, owner)
        and record.lease_expires_at is not None
        and record.lease_expires_at > datetime.now(UTC)
    )
