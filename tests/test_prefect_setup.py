"""`video-generator setup-prefect` on a real Prefect server, and the global prediction limit it creates."""

from __future__ import annotations

from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from clipgen.backends import register_provider
from clipgen.job import ClipPrompts, GenerationOptions
from commands.cli import main
from flows.video_generator import generate_video_clips
from tests.doubles import ScriptedProvider

pytestmark = pytest.mark.usefixtures("prefect_server")


def limit_size(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).limit


def test_setup_creates_the_pool_and_the_limit_and_can_run_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"predictions-{uuid4().hex[:8]}"
    monkeypatch.setenv("VIDEO_GENERATOR_PREDICTION_LIMIT", name)
    assert main(["setup-prefect", "--work-pool", "vg-test-pool", "--prediction-limit", "4"]) == 0
    assert main(["setup-prefect", "--work-pool", "vg-test-pool", "--prediction-limit", "4"]) == 0
    assert main(["setup-prefect", "--work-pool", "vg-test-pool", "--prediction-limit", "7"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "work pool vg-test-pool: created (type process) on " + str(PREFECT_API_URL.value()),
        f"concurrency limit {name}: created with 4 slots",
        "work pool vg-test-pool: already there (type process)",
        f"concurrency limit {name}: already 4 slots",
        "work pool vg-test-pool: already there (type process)",
        f"concurrency limit {name}: set to 7 slots (was 4)",
    ]
    assert limit_size(name) == 7
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("vg-test-pool")
    assert pool.type == "process" and pool.base_job_template["job_configuration"]


def test_setup_refuses_without_a_server_to_keep_it(capsys: pytest.CaptureFixture[str]) -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["setup-prefect"]) == 2
    assert "PREFECT_API_URL" in capsys.readouterr().err


def job(n: int) -> ClipPrompts:
    return ClipPrompts.model_validate(
        {
            "job_id": str(uuid4()),
            "clip_prompts": [{"clip_index": i, "prompt": f"clip {i}", "duration": 2.0} for i in range(n)],
        }
    )


@pytest.mark.parametrize("paid", [True, False])
def test_paid_predictions_take_slots_of_the_global_limit(paid: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"predictions-{uuid4().hex[:8]}"
    monkeypatch.setenv("VIDEO_GENERATOR_PREDICTION_LIMIT", name)
    assert main(["setup-prefect", "--work-pool", "vg-test-pool", "--prediction-limit", "2"]) == 0
    provider = ScriptedProvider(delay_s=0.6, paid=paid)
    register_provider("scripted", lambda settings: provider)

    state = generate_video_clips(
        job(6), GenerationOptions(model="veo-3.1", concurrency=5), "scripted", "local", return_state=True
    )

    assert state.is_completed() and state.message == "6/6 clips"
    if paid:
        assert provider.max_in_flight == 2  # the limit, not the run's concurrency of 5
    else:
        assert provider.max_in_flight == 5  # the local renderer pays nothing and takes no slot
    assert limit_size(name) == 2
