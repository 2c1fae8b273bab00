"""The embedded default provider: renders a local H.264 preview instead of calling a paid model."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from clipgen.images import load_fitted
from clipgen.media import character_card_size, render_preview
from clipgen.once import OncePerKey
from clipgen.planning import ClipPlan
from clipgen.providers.base import Generation, PaidWork, RemoteStatus

PREVIEW_FPS = 24
KEPT_IMAGE_BYTES = 64 * 1024 * 1024
"""Decoded images a provider keeps for its run's later clips: seven 1080p scenes. A job of more distinct
images decodes again those its clips come back to after seven others; it cannot make a worker keep them
all."""


class LocalProvider:
    """Animates the scene image (slow zoom/pan) with the characters inset, or draws the prompt.

    No network, no credentials, no cost: for trying the pipeline and for tests. The clip's metadata says it
    is a preview so nobody mistakes it for model output.

    One provider serves one flow run: each image is decoded once for the run, reduced to the size a clip
    draws it at (the frame for the scene, the card for a character), and shared by the clips that use it.
    """

    name = "local"
    paid = False

    def __init__(self) -> None:
        self._images: OncePerKey[tuple[str, tuple[int, int]], Image.Image] = OncePerKey(
            KEPT_IMAGE_BYTES, _decoded_bytes
        )

    def generate(self, plan: ClipPlan, dest: Path, work: PaidWork) -> Generation:
        # Nothing paid: the ledger is not involved, only the clip's lease, and the run's cap on generations
        # at once (a render stands for the prediction; it takes no slot of the paid prediction limit).
        work.check()
        with work.in_flight():
            self._render(plan, dest)
        return Generation(
            metadata={
                "provider": self.name,
                "preview": True,
                "note": f"Local preview rendered in place of {plan.model}; not model output.",
            }
        )

    def _render(self, plan: ClipPlan, dest: Path) -> None:
        frame = (plan.width, plan.height)
        scene = self._image(plan.scene_image, frame) if plan.scene_image else None
        card = character_card_size(frame)
        characters = [self._image(path, card) for path in plan.character_images]
        render_preview(
            dest,
            width=plan.width,
            height=plan.height,
            duration=plan.requested_duration,
            fps=PREVIEW_FPS,
            prompt=plan.prompt,
            scene_image=scene,
            character_images=characters,
            caption=f"PREVIEW · local renderer · {plan.model} · clip {plan.clip_index}",
        )

    def cancel(self, prediction_id: str) -> RemoteStatus | None:
        return None  # renders in-process; there is nothing running elsewhere to stop

    def _image(self, path: str, size: tuple[int, int]) -> Image.Image:
        """The image at `path` filling `size`, decoded the first time a clip of the run asks for it. Clips
        only read it (crops and copies), so one image serves clips rendering at the same time."""
        return self._images.get((path, size), lambda: load_fitted(Path(path), size))


def _decoded_bytes(image: Image.Image) -> int:
    return image.width * image.height * 4  # Pillow keeps an RGB pixel in 4 bytes
