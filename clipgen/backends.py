"""The one place that turns provider and store names into objects.

Names are plain strings so they can be flow parameters and environment variables: `local`, `replicate`,
`supabase`, anything registered with `register_provider`/`register_store`, or an import path
`package.module:factory` where the factory takes the Settings and returns the object.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipgen.providers.base import VideoProvider
from clipgen.settings import Settings
from clipgen.stores.base import ClipStore

ProviderFactory = Callable[[Settings], VideoProvider]
StoreFactory = Callable[[Settings], ClipStore]


def _local_provider(settings: Settings) -> VideoProvider:
    from clipgen.providers.local import LocalProvider

    return LocalProvider()


def _local_store(settings: Settings) -> ClipStore:
    from clipgen.stores.local import LocalStore

    return LocalStore(settings.data_dir)


_providers: dict[str, ProviderFactory] = {"local": _local_provider}
_stores: dict[str, StoreFactory] = {"local": _local_store}
_lock = threading.Lock()


@dataclass(frozen=True)
class Backends:
    provider: VideoProvider
    store: ClipStore
    settings: Settings


def register_provider(name: str, factory: ProviderFactory) -> None:
    with _lock:
        _providers[name] = factory
        open_backends.cache_clear()


def register_store(name: str, factory: StoreFactory) -> None:
    with _lock:
        _stores[name] = factory
        open_backends.cache_clear()


def known_providers() -> list[str]:
    return sorted(_providers)


def known_stores() -> list[str]:
    return sorted(_stores)


@functools.lru_cache(maxsize=16)
def open_backends(provider: str, store: str, settings: Settings) -> Backends:
    """One provider and one store per (names, settings) in a process, shared by the clip tasks' threads."""
    return Backends(
        provider=_factory(_providers, provider, "provider")(settings),
        store=_factory(_stores, store, "store")(settings),
        settings=settings,
    )


def _factory(registry: dict[str, Any], name: str, kind: str) -> Any:
    if name in registry:
        return registry[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(
            f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(registry))} or module:factory"
        )
    return getattr(importlib.import_module(module), attr)
