"""Typed errors, the whole tree of them. Retry policy reads the type, never the message.

This module owns the error types: every error this package raises on purpose is defined here.

VideoGeneratorError
├── ValidationError            bad job or options; refused before any paid call (CLI exit 2)
├── ConfigurationError         an unknown provider or store name, a factory that cannot be imported,
│                              missing credentials (also a ValueError, for callers that catch that)
├── MediaError                 a file is not a readable video or image
├── OperationalError           a service the command needs failed it, not the job (CLI exit 3-6)
│   ├── PrefectUnavailable     Prefect's API does not answer, or the temporary server did not start
│   │   └── PrefectDatabaseTooNew  the temporary server's database was migrated by a newer Prefect
│   ├── PrefectRefused         Prefect's API refused a request (a 4xx answer)
│   └── StoreUnavailable       the clip store does not answer, or refuses our credentials (before a run)
├── StoreError                 a request to the clip store failed (during a run); each one is also one of
│   ├── StoreFailed            (also TransientError) an outage that may pass: 429, 5xx, connection reset
│   └── StoreRefused           (also PermanentError) a refusal that will not: 4xx
├── QueueError                 the job queue refused a request
│   └── JobBusy                enqueue of a job that is running under a live lease
└── GenerationError            one clip attempt failed
    ├── TransientError         worth another attempt: timeouts, 429, 5xx, connection resets,
    │   │                      a clip shorter than the acceptance rule
    │   ├── ClipTooShort
    │   ├── LostCreateUnresolved  a create's answer was lost and we cannot tell yet what it made
    │   ├── ClipTakenOver      another run holds the clip's lease now
    │   ├── OutputGone         a prediction's output was deleted, or it has none to download
    │   ├── HintTooLong        a 429's reset hint is further off than the create may wait
    │   └── StoreFailed        (see StoreError)
    └── PermanentError         another attempt would fail the same way: invalid input,
        │                      content rejected, unsupported setting
        ├── ContentRejected
        ├── ClipShapeMismatch
        ├── NotFound           the provider's API does not know what was asked for (HTTP 404)
        ├── PublicBucket       a store bucket anyone can read
        ├── StoreRefused       (see StoreError)
        ├── BudgetExceeded     not final for the plan: a larger budget lets a rerun go on
        └── RunStopped         not final for the plan: this run was told to stop (its job lease was lost)
"""

from __future__ import annotations

from dataclasses import dataclass


class VideoGeneratorError(Exception):
    """Root of every error this package raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (`field`, a dotted path) and what."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationError(VideoGeneratorError, ValueError):
    """The job or its options cannot be run as given. Raised before any clip task runs."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("ValidationError needs at least one problem")
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def one(cls, field: str, message: str) -> ValidationError:
        return cls([Problem(field, message)])


class ConfigurationError(VideoGeneratorError, ValueError):
    """The settings name something that cannot be opened: an unknown provider or store, a `module:factory`
    that does not import, missing credentials. Nothing was contacted. (A ValueError too, for callers that
    still catch that.)"""


class MediaError(VideoGeneratorError):
    """A file could not be decoded as the video or image it should be."""


class OperationalError(VideoGeneratorError):
    """Something the command needs failed it (a service, not the job nor its input). Carries what a person
    needs to act: what failed (the message), the likely cause, and what to do."""

    def __init__(self, what: str, *, cause: str, remedy: str) -> None:
        super().__init__(what)
        self.what, self.cause, self.remedy = what, cause, remedy


class PrefectUnavailable(OperationalError):
    """Prefect's API did not answer (nothing listens at PREFECT_API_URL, a 5xx), or the CLI's temporary
    Prefect server did not start in time."""


class PrefectDatabaseTooNew(PrefectUnavailable):
    """The temporary server's database carries a migration this Prefect does not know: a newer Prefect
    used it. Prefect cannot read it, and must not change it."""


class PrefectRefused(OperationalError):
    """Prefect's API answered a request with a 4xx: it will refuse the same request again."""


class StoreUnavailable(OperationalError):
    """The clip store could not be read before the run: unreachable, or it refused our credentials."""


class QueueError(VideoGeneratorError):
    """The job queue refused a request (not a clip attempt, nor an outage of the store behind it)."""


class JobBusy(QueueError):
    """enqueue of a job that is running under a live lease."""


class StoreError(VideoGeneratorError):
    """A request to the clip store failed during a run. Each one is also a TransientError or a
    PermanentError, so the clip task's retry rule (`is_retryable`) reads it like any other."""


class GenerationError(VideoGeneratorError):
    """A clip attempt failed."""


class TransientError(GenerationError):
    """Worth another attempt: the same request may well succeed later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        # Seconds the service asked us to wait (429 reset hint), when it said.
        self.retry_after = retry_after


def is_retryable(error: BaseException | None) -> bool:
    """The retry rule in one place: only a TransientError is worth another (possibly paid) attempt."""
    return isinstance(error, TransientError)


class PermanentError(GenerationError):
    """Another attempt would fail the same way; retrying only spends money."""

    # Whether a rerun of the same plan would fail the same way, so the clip is not paid for again (unless
    # the user asks for it); False for refusals that are about this run, not the clip.
    final_for_plan: bool = True


def is_final_for_plan(error: BaseException | None) -> bool:
    return isinstance(error, PermanentError) and error.final_for_plan


class PublicBucket(PermanentError):
    """A store bucket anyone can read: the store refuses to write clips or images there."""

    def __init__(self, bucket: str) -> None:
        super().__init__(f"bucket {bucket} is public; clips must be private (make it private)")
        self.bucket = bucket


class LostCreateUnresolved(TransientError):
    """A create's answer was lost and the provider's list cannot be read now: nothing new is paid for until
    it can tell whether that create made a prediction."""


class ClipTakenOver(TransientError):
    """The clip's lease passed to another run (this one stalled past it); the next attempt waits for it."""


class BudgetExceeded(PermanentError):
    """Creating this request would take the job past its budget."""

    final_for_plan = False


class RunStopped(PermanentError):
    """This run was told to stop working on the job (a queue run that lost the job's lease)."""

    final_for_plan = False


class ClipTooShort(TransientError):
    """The probed duration is below the acceptance rule (target - 2 s)."""


class ContentRejected(PermanentError):
    """The model or its safety filter refused the prompt or an image."""


class ClipShapeMismatch(PermanentError):
    """The clip's frame shape is not the aspect ratio that was asked for."""


class NotFound(PermanentError):
    """The provider's API does not know what was asked for (HTTP 404): a prediction id it never made, or a
    model."""


class OutputGone(TransientError):
    """The prediction's output was deleted (Replicate keeps API outputs for about an hour), or it has none."""


class HintTooLong(TransientError):
    """Waiting for a 429's reset hint would take a create past its budget; `wait_s` is what is left of it."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"creates may not be sent for another {wait_s:.1f} s", retry_after=wait_s)
        self.wait_s = wait_s


class StoreFailed(StoreError, TransientError):
    """The store did not serve a request, in a way that may pass (429, 5xx, a connection reset)."""


class StoreRefused(StoreError, PermanentError):
    """The store refused a request, and will refuse it again (a 4xx other than 429)."""
