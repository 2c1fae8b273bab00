"""The VideoProvider protocol: turn one planned clip into a video file, reporting paid work as it goes."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from clipgen.planning import ClipPlan


class Generation(BaseModel):
    """What a provider delivered for one clip attempt. The file is at the `dest` it was given."""

    prediction_id: str | None = Field(None, description="The provider's id for the paid request, if any.")
    metadata: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Intent:
    """A paid create about to be sent, or sent with no answer on record (a lost create: the process died
    before recording it, or the answer was lost on the way). The prediction it made, if any, was made at
    `sent_at` or later and is none of `known`, the ids the job's ledger had when the create was sent."""

    id: str
    sent_at: datetime
    known: frozenset[str]


RemoteStatus = Literal["succeeded", "failed", "canceled", "aborted", "gone"]
"""How a prediction ended on the provider's side; `gone`: succeeded, but its output can no longer be had."""


class PaidWork(Protocol):
    """The ledger's side of one clip's paid work (clipgen.paid_work.ClipWork). A paid provider calls it at
    each step of a prediction's life, and decides nothing about money itself: what to adopt, whether a
    create may be sent, what is on the bill and what to cancel are the ledger's."""

    def in_flight(self) -> AbstractContextManager[None]:
        """Hold a slot of the prediction limits while a prediction runs: enter it right before a create (or
        before following one that is still running) and leave it once the prediction has ended. Its output's
        download is not in it."""
        ...

    def adoptable(self) -> list[str]:
        """Predictions made for this plan that may still deliver, newest first: re-attach, do not create."""
        ...

    def lost_creates(self) -> list[Intent]:
        """Creates for this plan whose answer was never recorded: look for what they made first."""
        ...

    def intend(self) -> Intent:
        """Right before a paid create: reserve its price and put the intent on record. Raises BudgetExceeded,
        or RunStopped / ClipTakenOver when this run may no longer work the clip."""
        ...

    def created(self, intent_id: str, prediction_id: str) -> None:
        """The create was answered: the prediction is on the ledger and the bill. If that cannot be
        recorded, the prediction is canceled at once and this raises."""
        ...

    def made_nothing(self, intent_id: str) -> None:
        """The create certainly made nothing (refused, or looked for and not found): the reservation ends."""
        ...

    def found(self, intent_id: str, prediction_id: str) -> None:
        """A lost create's prediction was found: it is on the ledger and the bill from now on."""
        ...

    def ended(self, prediction_id: str, status: RemoteStatus, error: str | None = None) -> None:
        """A prediction this attempt followed reached a final state on the provider."""
        ...

    def give_up(self, prediction_id: str, reason: str) -> None:
        """Stop a prediction this attempt no longer waits for (its deadline passed): canceled and recorded."""
        ...

    def check(self) -> None:
        """Raises RunStopped or ClipTakenOver when this run may no longer work the clip."""
        ...


class VideoProvider(Protocol):
    """Implementations raise TransientError or PermanentError (clipgen.errors) and nothing else on purpose."""

    name: str
    # Whether each generation is a paid remote request; those take a slot of the global prediction limit.
    paid: bool

    def generate(self, plan: ClipPlan, dest: Path, work: PaidWork) -> Generation:
        """Produce the clip and write it to `dest` atomically (no half-written file at `dest`).

        A paid provider reports every step to `work`: it re-attaches to what `work.adoptable()` names
        instead of paying again, looks for what `work.lost_creates()` made before creating anything, and
        brackets each create with `work.intend()` and `work.created()` / `work.made_nothing()` (neither
        when the answer was lost: the intent then stays for the next attempt to resolve).
        """
        ...

    def cancel(self, prediction_id: str) -> RemoteStatus | None:
        """Stop a paid request if it is still running, and return how it ended on the provider's side, or
        None when that is unknown. Safe to call on one that ended. Only clipgen.paid_work calls it."""
        ...
