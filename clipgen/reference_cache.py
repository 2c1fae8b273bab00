"""The bound on the reference cache (VIDEO_GENERATOR_DATA_DIR/cache/references): by age and by total size.

Anyone who can send a job can make a worker fetch images into the cache, so without a bound it only grows.
`evict` runs once per job (`clipgen.references.reference_resolver`) and removes files unused for longer
than `max_age_s`, then the least recently used ones until the total fits `max_bytes`.

Other processes (workers, the CLI) use the same directory at the same time. What keeps that safe:
- files are content-addressed and written atomically (a temporary file renamed into place), so a reader
  sees a whole file or none, and a file that is gone is fetched or read from the store again;
- a use touches the file (`touch`), and nothing used within EVICTION_GRACE_S is removed: a plan that
  resolved a reference keeps its file while its clips read it;
- a file is renamed aside before it is deleted and put back if it was touched meanwhile, so a use that
  races the eviction either finds the file gone (and fetches it) or keeps it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EVICTION_GRACE_S = 6 * 3600.0
"""A file used this recently is never removed, whatever the bound: longer than a job's run takes."""
GIB = 1024**3
DAY_S = 86400.0


@dataclass(frozen=True)
class CacheBound:
    """How much the reference cache keeps."""

    max_bytes: int = GIB
    max_age_s: float = 7 * DAY_S

    @classmethod
    def from_settings(cls) -> CacheBound:
        from clipgen.settings import Settings

        settings = Settings()
        return cls(settings.reference_cache_max_bytes, settings.reference_cache_max_age_days * DAY_S)


def touch(path: Path) -> bool:
    """Mark a cached file as used now; False if it is not there (never cached, or evicted)."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:  # a read-only cache: used as it is, never evicted by this process
        return path.is_file()
    return path.is_file()


def evict(cache_dir: Path, bound: CacheBound, now: float | None = None) -> list[Path]:
    """Remove what `bound` says must go; the paths removed. Best effort: a file another process removed or
    touched meanwhile is left to it, and an error is logged, not raised (planning goes on)."""
    now = time.time() if now is None else now
    files = _files_oldest_first(cache_dir)
    total = sum(size for _, size, _ in files)
    removed: list[Path] = []
    for used, size, path in files:
        idle = now - used
        if idle < EVICTION_GRACE_S:
            break  # oldest first: every file after this one was used as recently or later
        leftover = path.name.startswith(".")  # a crashed writer's temporary file
        if not leftover and idle <= bound.max_age_s and total <= bound.max_bytes:
            continue
        if _remove_if_idle(path, now - EVICTION_GRACE_S):
            removed.append(path)
            total -= size
    return removed


def _files_oldest_first(cache_dir: Path) -> list[tuple[float, int, Path]]:
    files: list[tuple[float, int, Path]] = []
    try:
        entries = list(os.scandir(cache_dir))
    except FileNotFoundError:
        return files
    except OSError as exc:
        log.warning("cannot list the reference cache %s: %s", cache_dir, exc)
        return files
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                files.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        except OSError:
            continue  # removed meanwhile
    files.sort()
    return files


def _remove_if_idle(path: Path, cutoff: float) -> bool:
    """Delete `path` unless it was used after `cutoff`; renamed aside first, so a use that touches it between
    the check and the delete puts it back instead of losing it."""
    aside = path.with_name(f".evict-{os.getpid()}-{path.name}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another process evicted it
    except OSError as exc:
        log.warning("cannot evict %s from the reference cache: %s", path, exc)
        return False
    try:
        if aside.stat().st_mtime > cutoff:
            os.replace(aside, path)  # touched meanwhile: keep it (the same bytes as any newer copy)
            return False
        aside.unlink()
    except OSError as exc:
        log.warning("cannot evict %s from the reference cache: %s", path, exc)
        return False
    return True
