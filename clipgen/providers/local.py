"""The embedded default provider: renders a local H.264 preview instead of calling a paid model."""

from __future__ import annotations

from pathlib import Path

from clipgen.media import load_image, render_preview
from clipgen.planning import ClipPlan
from clipgen.providers.base import Generation, PaidWork, RemoteStatus

PREVIEW_FPS = 24


class LocalProvider:
    """Animates the scene image (slow zoom/pan) with the characters inset, or draws the prompt.

    No network, no credentials, no cost: for trying the pipeline and for tests. The clip's metadata says it
    is a preview so nobody mistakes it for model output.
    """

    name = "local"
    paid = False

    def generate(self, plan: ClipPlan, dest: Path, work: PaidWork) -> Generation:
        # Nothing paid: the ledger is not involved, only the clip's lease.
        work.check()
        scene = load_image(Path(plan.scene_image)) if plan.scene_image else None
        characters = [load_image(Path(path)) for path in plan.character_images]
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
        return Generation(
            metadata={
                "provider": self.name,
                "preview": True,
                "note": f"Local preview rendered in place of {plan.model}; not model output.",
            }
        )

    def cancel(self, prediction_id: str) -> RemoteStatus | None:
        return None  # renders in-process; there is nothing running elsewhere to stop
