"""Typed errors. Retry policy reads the type, never the message.

VideoGeneratorError
├── ValidationError            bad job or options; refused before any paid call (CLI exit 2)
├── MediaError                 a file is not a readable video or image
├── OperationalError           a service the command needs failed it, not the job (CLI exit 3-6)
│   ├── PrefectUnavailable     Prefect's API does not answer, or the temporary server did not start
│   │   └── PrefectDatabaseTooNew  the temporary server's database was migrated by a newer Prefect
│   ├── PrefectRefused         Prefect's API refused a request (a 4xx answer)
│   └── StoreUnavailable       the clip store does not answer, or refuses our credentials
└── GenerationError            one clip attempt failed
    ├── TransientError         worth another attempt: timeouts, 429, 5xx, connection resets,
    │   │                      a clip shorter than the acceptance rule
    │   ├── ClipTooShort
    │   ├── LostCreateUnresolved  a create's answer was lost and we cannot tell yet what it made
    │   └── ClipTakenOver      another run holds the clip's lease now
    └── PermanentError         another attempt would fail the same way: invalid input,
        │                      content rejected, unsupported setting
        ├── ContentRejected
        ├── ClipShapeMismatch
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
