"""`video-generator setup-prefect`: what a Prefect server needs before the deployments run on it.

- the process work pool that prefect.yaml's deployments name, for `prefect worker start --pool ...`;
- the global concurrency limit every paid prediction takes a slot of (tasks/clips.py), so in-flight
  Replicate predictions stay under one cap however many runs and workers there are.

Idempotent: run it again to change the limit's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator


class PrefectSetupError(Exception):
    """A setting the setup cannot work with; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def setup_prefect(work_pool: str, limit_name: str, limit_size: int) -> Iterator[str]:
    """Create (or update) both on the server at PREFECT_API_URL, yielding a line per step."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
        WorkPoolCreate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import PREFECT_API_URL
    from prefect.workers.process import ProcessWorker

    api_url = PREFECT_API_URL.value()
    if not api_url:
        # Without it Prefect would start a temporary server, and the setup would vanish with it.
        raise PrefectSetupError(
            "PREFECT_API_URL", "is not set; point it at your Prefect server (e.g. http://HOST:4200/api)"
        )
    if not limit_name:
        raise PrefectSetupError("VIDEO_GENERATOR_PREDICTION_LIMIT", "is empty; give the limit a name")
    with get_client(sync_client=True) as client:
        try:
            pool = client.create_work_pool(
                WorkPoolCreate(
                    name=work_pool,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
            yield f"work pool {pool.name}: created (type process) on {api_url}"
        except ObjectAlreadyExists:
            pool = client.read_work_pool(work_pool)
            yield f"work pool {pool.name}: already there (type {pool.type})"
        try:
            existing = client.read_global_concurrency_limit_by_name(limit_name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=limit_name, limit=limit_size)
            )
            yield f"concurrency limit {limit_name}: created with {limit_size} slots"
        else:
            if existing.limit != limit_size or not existing.active:
                client.update_global_concurrency_limit(
                    limit_name, GlobalConcurrencyLimitUpdate(limit=limit_size, active=True)
                )
                yield f"concurrency limit {limit_name}: set to {limit_size} slots (was {existing.limit})"
            else:
                yield f"concurrency limit {limit_name}: already {limit_size} slots"
