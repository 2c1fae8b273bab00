"""The one place that turns provider and store names into objects, and owns their lifetime.

Names are plain strings so they can be flow parameters and environment variables: `local`, `replicate`,
anything registered with `register_provider`/`register_store`, or an import path `package.module:factory`
where the factory takes the Settings and returns the object.

A flow run opens its backends once (`run_backends`), its tasks (threads of the same process) find them by
the flow run's id, and they are closed when the run ends, so no connection outlives its run.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from clipgen.errors import ConfigurationError
from clipgen.paid_work import JobWork, SlotFactory
from clipgen.providers.base import VideoProvider
from clipgen.settings import Settings
from clipgen.stores.base import ClipStore

ProviderFactory = Callable[[Settings], VideoProvider]
StoreFactory = Callable[[Settings], ClipStore]


def _local_provider(settings: Settings) -> VideoProvider:
    from clipgen.providers.local import LocalProvider

    return LocalProvider()


def _replicate_provider(settings: Settings) -> VideoProvider:
    from clipgen.providers.replicate import ReplicateProvider

    return ReplicateProvider.from_settings(settings)


def _local_store(settings: Settings) -> ClipStore:
    from clipgen.stores.local import LocalStore

    return LocalStore(settings.data_dir)


def _supabase_store(settings: Settings) -> ClipStore:
    from clipgen.stores.supabase import SupabaseStore

    return SupabaseStore.from_settings(settings)


_providers: dict[str, ProviderFactory] = {"local": _local_provider, "replicate": _replicate_provider}
_stores: dict[str, StoreFactory] = {"local": _local_store, "supabase": _supabase_store}
_by_run: dict[UUID, Backends] = {}
_stopped_jobs: set[UUID] = set()
_lock = threading.Lock()


@dataclass(frozen=True)
class Backends:
    provider: VideoProvider
    store: ClipStore
    settings: Settings
    work: JobWork
    job_id: UUID | None = None

    def close(self) -> None:
        close_quietly(self.provider)
        close_quietly(self.store)


def register_provider(name: str, factory: ProviderFactory) -> None:
    with _lock:
        _providers[name] = factory


def register_store(name: str, factory: StoreFactory) -> None:
    with _lock:
        _stores[name] = factory


def known_providers() -> list[str]:
    return sorted(_providers)


def known_stores() -> list[str]:
    return sorted(_stores)


def open_provider(name: str, settings: Settings) -> VideoProvider:
    """ConfigurationError for an unknown name or missing credentials; nothing is contacted yet."""
    factory: ProviderFactory = _factory(_providers, name, "provider")
    return factory(settings)


def open_store(name: str, settings: Settings) -> ClipStore:
    factory: StoreFactory = _factory(_stores, name, "store")
    return factory(settings)


@contextmanager
def run_backends(
    run_id: UUID,
    provider: str,
    store: str,
    settings: Settings,
    *,
    job_id: UUID | None = None,
    budget_usd: float | None = None,
    retry_failed: bool = False,
    concurrency: int | None = None,
    prediction_slot: SlotFactory = nullcontext,
) -> Iterator[Backends]:
    """Open the run's provider and store, make them findable by `backends_of_run`, close them after.

    The run's paid work (`JobWork`) is owned by the run: its leases carry the run's id, and its budget is
    the job's, kept by the store's ledger across runs and workers. Its predictions in flight hold one of
    the run's `concurrency` slots and one `prediction_slot` (the global limit) each.
    """
    opened_store = open_store(store, settings)
    try:
        opened_provider = open_provider(provider, settings)
        work = JobWork(
            opened_store,
            opened_provider,
            owner=str(run_id),
            budget_usd=budget_usd,
            lease_seconds=settings.clip_lease_seconds,
            retry_failed=retry_failed,
            concurrency=concurrency,
            prediction_slot=prediction_slot,
        )
        backends = Backends(opened_provider, opened_store, settings, work, job_id)
    except BaseException:
        close_quietly(opened_store)
        raise
    with _lock:
        _by_run[run_id] = backends
        if job_id in _stopped_jobs:
            work.stop.set()
    try:
        yield backends
    finally:
        with _lock:
            _by_run.pop(run_id, None)
        backends.close()


def backends_of_run(run_id: UUID) -> Backends:
    with _lock:
        try:
            return _by_run[run_id]
        except KeyError:
            raise LookupError(f"no backends are open for flow run {run_id}") from None


def stop_runs_of_job(job_id: UUID) -> None:
    """Tell every run of `job_id` in this process, and any started later, to stop working on it (its queue
    run lost the job's lease): clips not yet paid for are not started, and predictions are left to the run
    that took over. Until `allow_runs_of_job`."""
    with _lock:
        _stopped_jobs.add(job_id)
        runs = [backends for backends in _by_run.values() if backends.job_id == job_id]
    for backends in runs:
        backends.work.stop.set()


def allow_runs_of_job(job_id: UUID) -> None:
    """A fresh claim on the job: its runs may work again."""
    with _lock:
        _stopped_jobs.discard(job_id)


def close_quietly(resource: object) -> None:
    close = getattr(resource, "close", None)
    if callable(close):
        close()


def _factory(registry: dict[str, Any], name: str, kind: str) -> Any:
    """The registered factory, or the one `module:factory` names. ConfigurationError when there is none."""
    if name in registry:
        return registry[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ConfigurationError(
            f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(registry))} or module:factory"
        )
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(f"{kind} {name!r}: cannot import {module!r} ({exc})") from exc
    # Only the lookup: an AttributeError raised while importing the module is a bug in it, not a setting.
    try:
        return getattr(loaded, attr)
    except AttributeError:
        raise ConfigurationError(f"{kind} {name!r}: module {module!r} has no {attr!r}") from None
