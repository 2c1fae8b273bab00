"""The VideoProvider protocol: turn one planned clip into a video file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from clipgen.planning import ClipPlan


class Generation(BaseModel):
    """What a provider delivered for one clip attempt. The file is at the `dest` it was given."""

    prediction_id: str | None = Field(None, description="The provider's id for the paid request, if any.")
    cost: float = Field(0.0, description="USD charged for this generation.")
    metadata: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class LostCreate:
    """A paid create for the clip was sent at `sent_at` and its answer never reached the ledger (the process
    died between the two, or the answer was lost). The prediction it may have made is none of `known`, the
    ids the job's ledger already has."""

    sent_at: datetime
    known: frozenset[str]


class VideoProvider(Protocol):
    """Implementations raise TransientError or PermanentError (clipgen.errors) and nothing else on purpose."""

    name: str
    # Whether each generation is a paid remote request; those take a slot of the global prediction limit.
    paid: bool

    def generate(
        self,
        plan: ClipPlan,
        dest: Path,
        *,
        resume: str | None = None,
        on_created: Callable[[str], None] | None = None,
        before_create: Callable[[], None] | None = None,
        lost_create: LostCreate | None = None,
    ) -> Generation:
        """Produce the clip and write it to `dest` atomically (no half-written file at `dest`).

        `on_created` is called with the id of a paid request the moment it exists, before any waiting, so
        it is on record even if this process dies. `resume` is such an id from an earlier attempt: a
        provider re-attaches to it (waits for it, or downloads its output again) instead of paying for a
        new one, unless it failed, was canceled or its output is gone. `before_create` is called right before
        each paid request is made and may refuse it by raising (the job's budget); it is not called when the
        provider re-attaches. `lost_create`: before paying for a new request (and when `resume` gives nothing
        to re-attach to), look for the one that create made, and adopt it (reporting it to `on_created`) when
        it can be told apart from every other.
        """
        ...

    def cancel(self, prediction_id: str) -> str | None:
        """Stop a paid request if it is still running, and return how it ended on the provider's side
        (`succeeded`, `failed`, `canceled`), or None when that is unknown. Safe to call on one that ended."""
        ...
