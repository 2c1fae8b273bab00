"""The states of a paid request and the only ways between them: a small state machine, pure.

    intended ──> created ──> succeeded ──> delivered | rejected | abandoned
        │            └─────> failed | canceled
        └──> void   (the create certainly made nothing)

What each state means is written beside `PredictionStatus` (clipgen/stores/base.py); who moves a prediction
from one to the next is clipgen/paid_work.py, and nobody else.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from clipgen.providers.base import RemoteStatus
from clipgen.stores.base import PredictionRecord, PredictionStatus

_NEXT: dict[PredictionStatus, frozenset[PredictionStatus]] = {
    "intended": frozenset({"void", "created"}),
    "created": frozenset({"succeeded", "failed", "canceled"}),
    "succeeded": frozenset({"delivered", "rejected", "abandoned"}),
}
ADOPTABLE: frozenset[PredictionStatus] = frozenset({"created", "succeeded"})
NOT_BILLED: frozenset[PredictionStatus] = frozenset({"intended", "void"})


class IllegalTransition(ValueError):
    """A ledger status may only move forward along the state machine."""


@functools.cache
def reachable(status: PredictionStatus) -> frozenset[PredictionStatus]:
    """Every status `status` can move to, in one step or several."""
    found: set[PredictionStatus] = set()
    for step in _NEXT.get(status, frozenset()):
        found |= {step, *reachable(step)}
    return frozenset(found)


def advance(current: PredictionStatus, new: PredictionStatus) -> PredictionStatus:
    """`new`, when the machine allows it from `current` (staying put is allowed: writes repeat)."""
    if new != current and new not in reachable(current):
        raise IllegalTransition(f"a prediction cannot go from {current} to {new}")
    return new


def ended_status(remote: RemoteStatus, wanted: bool) -> PredictionStatus:
    """The ledger status for how a prediction ended on the provider. A success nobody wants is abandoned;
    one still wanted stays `succeeded`, adoptable until its output expires."""
    if remote == "succeeded":
        return "succeeded" if wanted else "abandoned"
    if remote == "gone":
        return "abandoned"
    if remote == "aborted":
        return "canceled"  # never started, never billed (its cost is cleared)
    return remote


def billed(records: Iterable[PredictionRecord]) -> float:
    """What these predictions cost: intents not yet sent or answered, and void ones, cost nothing."""
    return round(sum(r.cost for r in records if r.status not in NOT_BILLED), 4)


def moved(
    record: PredictionRecord, status: PredictionStatus, *, error: str | None = None, remote: str | None = None
) -> PredictionRecord:
    update: dict[str, object] = {"status": advance(record.status, status)}
    if error is not None:
        update["error"] = error
    if remote == "aborted":
        update["cost"] = 0.0
    return record.model_copy(update=update)


def committed(records: Iterable[PredictionRecord]) -> float:
    """What these requests may have cost: the billed ones, and creates whose answer is not known yet (each
    may have made a prediction). The job's budget counts the same."""
    return round(sum(r.cost for r in records if r.status != "void"), 4)
