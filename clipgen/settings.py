"""Settings from the environment. Built when asked for, never at import (workers and `prefect deploy`
import flow modules). Secrets are SecretStr: they print as '**********'.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from clipgen.job import GenerationOptions


class Settings(BaseSettings):
    """Every setting is read from its exact environment variable name, listed in docs/configuration.md."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    provider: str = Field(
        "local",
        validation_alias="VIDEO_GENERATOR_PROVIDER",
        description="Video provider: local (preview renderer), replicate, or an import path module:factory.",
    )
    store: str = Field(
        "local",
        validation_alias="VIDEO_GENERATOR_STORE",
        description="Clip store: local (files + SQLite), supabase, or an import path module:factory.",
    )
    data_dir: Path = Field(
        Path(".video-generator"),
        validation_alias="VIDEO_GENERATOR_DATA_DIR",
        description="Local store, work files and reference cache.",
    )
    concurrency: int = Field(5, ge=1, le=50, validation_alias="VIDEO_GENERATOR_CONCURRENCY")
    min_clips: int = Field(3, ge=1, validation_alias="VIDEO_GENERATOR_MIN_CLIPS")
    clip_timeout_seconds: float | None = Field(
        None, gt=0, le=3600, validation_alias="VIDEO_GENERATOR_CLIP_TIMEOUT_SECONDS"
    )
    duration_buffer: float = Field(1.25, ge=1.0, le=2.0, validation_alias="VIDEO_GENERATOR_DURATION_BUFFER")
    retry_backoff_seconds: float = Field(
        2.0,
        ge=0,
        validation_alias="VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS",
        description="First retry delay; doubles each attempt, with jitter.",
    )
    thumbnail_wait_seconds: float = Field(
        60.0,
        gt=0,
        validation_alias="VIDEO_GENERATOR_THUMBNAIL_WAIT_SECONDS",
        description="How long the flow waits for outstanding thumbnails before it returns.",
    )
    prediction_limit: str = Field(
        "replicate-predictions",
        validation_alias="VIDEO_GENERATOR_PREDICTION_LIMIT",
        description="Prefect global concurrency limit that caps in-flight paid predictions across every run "
        "and worker (created by `video-generator setup-prefect`); empty to not take slots.",
    )
    clip_lease_seconds: float = Field(
        60.0,
        ge=1,
        validation_alias="VIDEO_GENERATOR_CLIP_LEASE_SECONDS",
        description="How long a run's lease on a clip lasts without renewal: a second run of the job waits "
        "for it, and a dead run's clips are taken over after it. Renewed every third of it.",
    )
    queue_lease_seconds: float = Field(
        300.0,
        ge=1,
        validation_alias="VIDEO_GENERATOR_QUEUE_LEASE_SECONDS",
        description="How long a queue run's claim on a job lasts without renewal; a crashed run's job is "
        "claimable again after it. Renewed every third of it while the job runs.",
    )
    queue_max_attempts: int = Field(
        3,
        ge=1,
        validation_alias="VIDEO_GENERATOR_QUEUE_MAX_ATTEMPTS",
        description="Runs a submitted job gets before it is marked failed for good.",
    )
    queue_retry_delay_seconds: float = Field(
        60.0,
        ge=0,
        validation_alias="VIDEO_GENERATOR_QUEUE_RETRY_DELAY_SECONDS",
        description="How long a failed queued job waits before it may be claimed again.",
    )
    queue_jobs_at_once: int | None = Field(
        None,
        ge=1,
        le=256,
        validation_alias="VIDEO_GENERATOR_QUEUE_JOBS_AT_ONCE",
        description="Jobs a queue run works on at once. Unset: what the worker can hold, from its available "
        "memory and CPUs when the run starts (clipgen.queueing.jobs_at_once).",
    )
    allow_file_references: bool = Field(
        False,
        validation_alias="VIDEO_GENERATOR_ALLOW_FILE_REFERENCES",
        description="Let jobs name reference images by file path or file: URL, read on the worker. Off: jobs "
        "come from the UI, the API and the queue, and could read any file; the CLI uploads a job file's "
        "images to the store itself.",
    )
    allow_loopback_references: bool = Field(
        False,
        validation_alias="VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES",
        description="Let reference URLs resolve to loopback (127.0.0.0/8, ::1), for local staging. Private, "
        "link-local and other non-public addresses stay refused.",
    )
    # The reference cache's bound (clipgen.reference_cache).
    reference_cache_max_bytes: int = Field(
        1024**3,
        ge=0,
        validation_alias="VIDEO_GENERATOR_REFERENCE_CACHE_MAX_BYTES",
        description="Total size the reference cache is brought back under once per job, least recently "
        "used images first; an image used in the last 6 hours is never removed.",
    )
    reference_cache_max_age_days: float = Field(
        7.0,
        gt=0,
        validation_alias="VIDEO_GENERATOR_REFERENCE_CACHE_MAX_AGE_DAYS",
        description="Cached reference images unused this long are removed (fetched again when needed).",
    )
    replicate_api_token: SecretStr | None = Field(None, validation_alias="REPLICATE_API_TOKEN")
    replicate_base_url: str | None = Field(None, validation_alias="REPLICATE_BASE_URL")
    replicate_poll_interval_seconds: float = Field(
        1.0, gt=0, validation_alias="REPLICATE_POLL_INTERVAL", description="Seconds between prediction polls."
    )
    supabase_url: str | None = Field(None, validation_alias="SUPABASE_URL")
    supabase_service_role_key: SecretStr | None = Field(None, validation_alias="SUPABASE_SERVICE_ROLE_KEY")
    api_token: SecretStr | None = Field(
        None,
        validation_alias="VIDEO_GENERATOR_API_TOKEN",
        description="When set, every route of `video-generator serve` requires it.",
    )
    server_url: str | None = Field(
        None,
        validation_alias="VIDEO_GENERATOR_SERVER_URL",
        description="Where `video-generator serve` runs; `run` then prints each job's page.",
    )
    public_url: str | None = Field(
        None,
        validation_alias="VIDEO_GENERATOR_PUBLIC_URL",
        description="The base URL where clients reach `video-generator serve` (https://clips.example): "
        "links to the local store's objects start with it. Unset: the request's address when it came over "
        "loopback, otherwise links relative to the server; never the request's Host header from elsewhere.",
    )
    signed_url_ttl_seconds: int = Field(
        7 * 24 * 3600,
        ge=60,
        validation_alias="VIDEO_GENERATOR_SIGNED_URL_TTL_SECONDS",
        description="Lifetime of signed links to clips and thumbnails in private buckets.",
    )

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def reference_cache_dir(self) -> Path:
        return self.data_dir / "cache" / "references"

    def default_options(self) -> GenerationOptions:
        """Options when the caller gives none: the model defaults plus what the environment sets."""
        return GenerationOptions(
            concurrency=self.concurrency,
            min_success=self.min_clips,
            clip_timeout_s=self.clip_timeout_seconds,
            duration_buffer=self.duration_buffer,
        )
