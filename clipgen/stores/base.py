"""The ClipStore protocol, its records and the storage layout shared by every store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable
from uuid import UUID

from pydantic import BaseModel, Field

VIDEO_BUCKET = "video-clips"
THUMBNAIL_BUCKET = "clip-thumbnails"
REFERENCE_BUCKET = "clip-references"
"""A job's reference images, content-addressed (`sha256/<hex>.<ext>`, clipgen.reference_objects), so a job
names its images with short `store://` references instead of carrying their bytes."""
BUCKETS = (VIDEO_BUCKET, THUMBNAIL_BUCKET, REFERENCE_BUCKET)

ClipStatus = Literal["running", "success", "failed"]
# The states of one paid request; clipgen.paid_work owns the transitions between them:
#   intended  -> a create is about to be sent (its price is reserved against the job's budget); the row's id
#                is a placeholder ("intent:<uuid>") until the provider's answer names the prediction;
#   void      <- intended: the create certainly made nothing (refused, or looked for and not found);
#   created   <- intended: it exists on the provider, starting or processing as far as we know;
#   succeeded <- created: it finished and its output is not stored yet: any worker may adopt it (download
#                the output again) until the output expires;
#   delivered <- succeeded: its output is the stored clip;
#   rejected  <- succeeded: its output failed our checks (too short, wrong shape);
#   abandoned <- succeeded: its output will never be used (expired, or the clip was stored from another);
#   failed / canceled <- created: it ended on the provider's side that way (or we canceled it).
PredictionStatus = Literal[
    "intended", "void", "created", "succeeded", "delivered", "rejected", "abandoned", "failed", "canceled"
]
INTENT_PREFIX = "intent:"


def clip_object_path(job_id: UUID, clip_index: int) -> str:
    """Deterministic, so a retried upload overwrites instead of duplicating."""
    return f"{job_id}/clip_{clip_index}.mp4"


def thumbnail_object_path(job_id: UUID, clip_index: int) -> str:
    return f"{job_id}/clip_{clip_index}_thumbnail.jpg"


class StoredObject(BaseModel):
    """Where an uploaded file lives, and a link to read it."""

    bucket: str
    path: str = Field(description="Path inside the bucket; kept so a link can be re-signed later.")
    url: str = Field(description="A link to read the object (signed for private buckets).")


class ClipRecord(BaseModel):
    """One row of `clips`: the latest known state of one clip of one job."""

    job_id: UUID
    clip_index: int
    status: ClipStatus
    model: str
    prediction_id: str | None = None
    attempts: int = 0
    requested_duration: float | None = Field(None, description="Duration asked of the model (buffered).")
    target_duration: float | None = Field(None, description="The prompt's target, before the buffer.")
    actual_duration: float | None = Field(None, description="Probed from the delivered file.")
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    video_path: str | None = Field(None, description="Object path in the video bucket.")
    cost: float = 0.0
    error: str | None = None
    plan_fingerprint: str | None = Field(
        None, description="What the clip was made for (model, prompt, shape, duration, images)."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="The delivered clip's metadata (provider, preview, model notes)."
    )
    failed_for_good: bool = Field(
        False, description="It failed with an error another attempt of the same plan would repeat."
    )
    lease_owner: str | None = Field(
        None,
        description="The run working the clip; read only: upsert_clip never writes it (the lease calls do).",
    )
    lease_expires_at: datetime | None = Field(None, description="When the owner's lease ends; read only.")
    created_at: datetime | None = None
    updated_at: datetime | None = None


class PredictionRecord(BaseModel):
    """One row of `clip_predictions`: the ledger of every paid request, written the moment it exists."""

    prediction_id: str
    job_id: UUID
    clip_index: int
    provider: str
    model: str
    plan_fingerprint: str = Field(description="The plan it was created for; only that plan may adopt it.")
    run_id: str | None = Field(None, description="The flow run that created it.")
    status: PredictionStatus = "created"
    cost: float = 0.0
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ThumbnailRecord(BaseModel):
    """One row of `clip_thumbnails`."""

    job_id: UUID
    clip_index: int
    thumbnail_path: str = Field(description="Object path in the thumbnail bucket.")
    thumbnail_url: str
    created_at: datetime | None = None


class StoredEvent(BaseModel):
    """One row of `job_events`: the replayable progress log. `id` increases with every append."""

    id: int
    job_id: UUID
    event: str
    data: dict[str, Any]
    created_at: datetime


class ClipStore(Protocol):
    """Files in three private buckets plus tables. Every write is safe to repeat."""

    def put_object(self, bucket: str, path: str, source: Path, content_type: str) -> StoredObject:
        """Copy `source` into the bucket at `path`, replacing what is there. Never leaves half a file."""
        ...

    def signed_url(self, bucket: str, path: str) -> str:
        """A fresh link to read an object."""
        ...

    def has_object(self, bucket: str, path: str) -> bool:
        """Whether an object is stored at `path` (so a content-addressed one need not be sent again)."""
        ...

    def read_object(self, bucket: str, path: str, dest: Path) -> None:
        """Copy the object at `path` to the file `dest`, replacing it whole; FileNotFoundError when there is
        no such object."""
        ...

    def upsert_clip(self, record: ClipRecord) -> None:
        """Insert or replace the row for (job_id, clip_index); created_at is kept from the first write."""
        ...

    def upsert_thumbnail(self, record: ThumbnailRecord) -> None:
        """Insert or replace the row for (job_id, clip_index)."""
        ...

    def append_event(self, job_id: UUID, event: str, data: dict[str, Any]) -> int:
        """Append to the job's progress log and return the new event's id."""
        ...

    def events(self, job_id: UUID, after: int = 0) -> list[StoredEvent]:
        """The job's events with id > `after`, oldest first."""
        ...

    def clip_records(self, job_id: UUID) -> list[ClipRecord]:
        """The job's clip rows, by clip_index."""
        ...

    def thumbnail_records(self, job_id: UUID) -> list[ThumbnailRecord]:
        """The job's thumbnail rows, by clip_index."""
        ...

    def record_prediction(self, record: PredictionRecord) -> None:
        """Insert or update the ledger row of `record.prediction_id`, keeping created_at from the first."""
        ...

    def predictions(self, job_id: UUID) -> list[PredictionRecord]:
        """The job's ledger, oldest first."""
        ...

    def reserve_prediction(self, record: PredictionRecord, budget_usd: float | None) -> bool:
        """Insert `record` (an intent) unless the job's committed spend plus `record.cost` would pass
        `budget_usd`; False when it would. Atomic across processes and machines: two runs of one job cannot
        both take what is left. Committed spend is the cost of every ledger row of the job but void ones."""
        ...

    def resolve_intent(self, intent_id: str, record: PredictionRecord) -> None:
        """The intent row `intent_id` becomes `record` (its real prediction id, status and cost), keeping its
        created_at; when there is no such row, or `record.prediction_id` is on the ledger already, `record`
        is upserted and the intent row removed. One transaction."""
        ...

    def take_clip_lease(self, job_id: UUID, clip_index: int, owner: str, seconds: float, model: str) -> bool:
        """Take the clip's lease for `owner` when it is free, expired or already `owner`'s (then renewed),
        inserting the clip's row (status running, `model`) when there is none. False when another owner
        holds a live lease. One conditional write; expiry by the store's clock."""
        ...

    def renew_clip_lease(self, job_id: UUID, clip_index: int, owner: str, seconds: float) -> bool:
        """Extend the lease while `owner` still holds it (expired but not taken counts); False when lost."""
        ...

    def release_clip_lease(self, job_id: UUID, clip_index: int, owner: str) -> None:
        """Give the lease up if `owner` holds it; a no-op otherwise."""
        ...


@runtime_checkable
class LocalObjects(Protocol):
    """A store whose objects are files on this machine. Its signed links are file:// URLs, which a browser
    on an http page cannot open, so `video-generator serve` serves them itself, asking the store for the
    file: the store alone knows its layout."""

    def object_file(self, bucket: str, path: str) -> Path | None:
        """The regular file holding the object, reached without a symlink; None for anything else (no such
        object, a path out of the bucket, a symlink, a directory)."""
        ...
