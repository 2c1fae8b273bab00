"""Rendered stand-in clips: a cache of them by shape and scene image, and a corrupt one for the fault."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import threading
from pathlib import Path

from PIL import Image

from clipgen.media import render_preview
from staging.fake_replicate.outputs import OutputPlan


class RenderCache:
    """Rendered stand-in clips, keyed by shape, frame count, frame rate and scene image. Thread-safe: each
    key renders once even when several predictions want it at the same time, and at most a CPU's worth of
    renders run at once so a burst of predictions does not thrash."""

    def __init__(self, folder: Path, max_parallel: int | None = None) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._slots = threading.BoundedSemaphore(max_parallel or os.cpu_count() or 2)

    def render(self, plan: OutputPlan, scene: Image.Image | None, scene_key: str | None) -> Path:
        name = f"{plan.width}x{plan.height}-{plan.frames}f-{plan.fps}fps-{scene_key or 'text'}.mp4"
        path = self.folder / name
        with self._lock:
            key_lock = self._key_locks.setdefault(name, threading.Lock())
        with key_lock:
            if not path.exists():
                with self._slots:
                    # The frame shows the clip's shape rather than the prompt: a cached clip serves many
                    # prompts, and the shape is what a staging run wants to see anyway.
                    label = f"{plan.width}x{plan.height} · {plan.frames} frames at {plan.fps} fps"
                    render_preview(
                        path,
                        width=plan.width,
                        height=plan.height,
                        duration=plan.duration,
                        fps=plan.fps,
                        prompt=label,
                        scene_image=scene,
                        caption="FAKE REPLICATE",
                    )
        return path


@functools.cache
def shared_cache() -> RenderCache:
    """One cache per process, made on first use and removed at exit: every fake server shares it."""
    folder = Path(tempfile.mkdtemp(prefix="fake-replicate-renders-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return RenderCache(folder)


def write_corrupt(dest: Path, size: int = 64 * 1024) -> None:
    """Bytes that start like an MP4 (an `ftyp` box) and then are garbage: no decoder can play them."""
    header = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    dest.write_bytes(header + b"\xde\xad\xbe\xef" * ((size - len(header)) // 4))
