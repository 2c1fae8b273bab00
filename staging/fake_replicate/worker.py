"""A prediction's life in its own worker thread: starting, processing (reading its images, rendering its
output) and its end, as scripted by its faults. The worker holds the fake's lock only to change a status
(through `Ledger`), never while reading images or rendering; the prediction's `wake` event interrupts its
waits (on cancel, reset or shutdown)."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from staging.fake_replicate.files import FileStore, InputImageError
from staging.fake_replicate.outputs import OutputPlan, PlanError, plan_output, scene_fields
from staging.fake_replicate.prediction import Prediction
from staging.fake_replicate.renders import RenderCache, shared_cache, write_corrupt
from staging.fake_replicate.rules import rule_violation

log = logging.getLogger(__name__)
Size = tuple[int, int]
STARTING_SHARE = 0.2  # of the latency spent "starting" (capped at 1 s) before "processing"


class Ledger(Protocol):
    """The status changes a worker makes, each under the fake's lock (FakeState is the one)."""

    def start_processing(self, prediction: Prediction) -> bool:
        """Starting -> processing; False if it ended meanwhile."""
        ...

    def finish(self, prediction: Prediction, status: str, **changes: Any) -> None:
        """Ends it with `status` and `changes` (error, output_path, logs) unless it has ended already."""
        ...

    def pass_deadline(self, prediction: Prediction) -> None:
        """Its Cancel-After deadline passed: aborted if it has not started, canceled if it has."""
        ...

    def worker_done(self) -> None:
        """The calling worker thread is about to return."""
        ...


@dataclass(frozen=True)
class Workshop:
    """Where workers read their inputs and write their outputs."""

    files: FileStore
    scratch: Path
    outputs: Path
    cache: RenderCache | None  # None: the process-wide shared cache


def run_prediction(prediction: Prediction, ledger: Ledger, workshop: Workshop) -> None:
    """The worker thread's target."""
    try:
        _work(prediction, ledger, workshop)
    except Exception:
        # A bug in the fake fails the prediction rather than leaving it processing forever.
        log.exception("fake prediction %s crashed", prediction.id)
        ledger.finish(prediction, "failed", error="Internal error in the fake Replicate server")
    finally:
        ledger.worker_done()


def _work(prediction: Prediction, ledger: Ledger, workshop: Workshop) -> None:
    if "abort" in prediction.faults:  # never picked up: ends aborted, as when Cancel-After passes first
        if not _pause(prediction, ledger, prediction.faults["abort"].seconds):
            ledger.finish(prediction, "aborted")
        return
    starting = min(prediction.latency_s * STARTING_SHARE, 1.0)
    if _pause(prediction, ledger, starting) or not ledger.start_processing(prediction):
        return  # canceled, reset, shut down or past its deadline
    ready_at = time.monotonic() + prediction.latency_s - starting
    if "hang" in prediction.faults:
        _pause(prediction, ledger, None)
        return
    try:
        plan, scene, scene_key = _plan(prediction, workshop)
    except (InputImageError, PlanError) as exc:
        ledger.finish(prediction, "failed", error=str(exc))
        return
    if "fail" in prediction.faults:
        if not _pause(prediction, ledger, ready_at - time.monotonic()):
            ledger.finish(prediction, "failed", error=prediction.faults["fail"].error)
        return
    if "short" in prediction.faults:
        plan = plan.shortened()
    dest = workshop.outputs / f"{prediction.id}.mp4"
    if "corrupt" in prediction.faults:
        write_corrupt(dest)
    else:
        shutil.copyfile((workshop.cache or shared_cache()).render(plan, scene, scene_key), dest)
    if not _pause(prediction, ledger, ready_at - time.monotonic()):
        frames = f"{plan.width}x{plan.height}, {plan.frames} frames at {plan.fps} fps"
        ledger.finish(prediction, "succeeded", output_path=dest, logs=f"Wrote {frames}\n")


def _plan(prediction: Prediction, workshop: Workshop) -> tuple[OutputPlan, Image.Image | None, str | None]:
    """What the model would deliver for this input, with the scene image and its digest; raises
    InputImageError or PlanError where the model would fail."""
    scene, scene_key, size = _read_images(prediction, workshop)
    values = prediction.schema.with_defaults(prediction.input)
    problem = rule_violation(prediction.schema.model, values)
    if problem:
        raise PlanError(problem)
    return plan_output(prediction.schema.model, values, size), scene, scene_key


def _pause(prediction: Prediction, ledger: Ledger, seconds: float | None) -> bool:
    """Wait `seconds` (None: until woken); True if the prediction ended meanwhile: canceled, reset,
    shut down, or ended here because its Cancel-After deadline passed (aborted if it had not started,
    canceled if it had, as on Replicate)."""
    seconds = None if seconds is None else max(0.0, seconds)
    if prediction.cancel_after_s is not None:
        left = max(0.0, prediction.created_clock + prediction.cancel_after_s - time.monotonic())
        if seconds is None or left < seconds:
            if not prediction.wake.wait(left):
                ledger.pass_deadline(prediction)
            return True
    return prediction.wake.wait(seconds)


def _read_images(
    prediction: Prediction, workshop: Workshop
) -> tuple[Image.Image | None, str | None, Size | None]:
    """Every image input, fetched and decoded as the model would; returns the scene image (the one
    that sets the output's shape), a digest of it, and its size."""
    images: dict[str, tuple[Image.Image, str]] = {}
    for name in prediction.schema.image_fields():
        value = prediction.input.get(name)
        uris = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        for index, uri in enumerate(uris):
            key = f"{name}.{index}" if isinstance(value, list) else name
            images[key] = workshop.files.read_image(key, uri, workshop.scratch)
    scene = next((images[name] for name in scene_fields(prediction.schema) if name in images), None)
    if scene is None:
        return None, None, None
    return scene[0], scene[1], scene[0].size
