"""A clip plan's fingerprint, one part of paid work (clipgen.paid_work owns it): what a clip depends on.

A ledger row, a stored clip and a kept file are used only for the plan whose fingerprint they carry.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from clipgen.planning import ClipPlan


def plan_fingerprint(plan: ClipPlan, provider: str) -> str:
    """What the clip depends on, the provider included: a preview never stands in for a paid clip, nor a
    rerun with other settings reuses a clip or adopts its predictions.

    Images count by content, not by path: a run on another worker must recognise the same plan.
    """
    keys = {"model", "prompt", "negative_prompt", "aspect_ratio", "width", "height", "requested_duration"}
    digest = hashlib.sha256(plan.model_dump_json(include=keys).encode())
    digest.update(provider.encode())
    for image in (plan.scene_image, *plan.character_images, *plan.object_images):
        if image:
            digest.update(_file_digest(Path(image)))
    return digest.hexdigest()[:16]


def _file_digest(path: Path) -> bytes:
    # Cached by path, size and modification time: cached references are named by content, but a file
    # reference allowed on the worker is read in place, and a changed file must not reuse the old clips.
    stat = path.stat()
    return _digest_of(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest_of(path: Path, size: int, mtime_ns: int) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()
