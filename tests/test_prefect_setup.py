"""`video-generator setup-prefect` on a real Prefect server, and the global prediction limit it creates."""

from __future__ import annotations

from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL, temporary_settings

from clipgen.backends import register_provider
from clipgen.job import ClipPrompts, GenerationOptions
from commands.cli import main
from flows.video_generator import generate_video_clips
from tests.api_recorder import RecordingProxy
from tests.doubles import ScriptedProvider
from tests.waiting import wait_until

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


def test_a_limit_whose_polls_would_pass_replicates_rate_limit_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["setup-prefect", "--prediction-limit", "41"]) == 2
    said = capsys.readouterr().err
    assert "--prediction-limit" in said and "the most is 40" in said and "REPLICATE_POLL_INTERVAL" in said
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "2")
    assert main(["setup-prefect", "--prediction-limit", "81"]) == 2
    assert "the most is 80" in capsys.readouterr().err


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


def test_a_slot_of_the_global_limit_is_lent_to_the_next_waiting_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip done with its slot hands it to the next clip of the process, without a release and an acquire
    at the Prefect server (each a lease written there); the fifth prediction gives it back, so other
    processes get their turn; and no slot is left held when the run ends. The server answers a request for
    a slot late, as a loaded one does, so a clip's own request is often on its way when a slot is freed."""
    name = f"predictions-{uuid4().hex[:8]}"
    monkeypatch.setenv("VIDEO_GENERATOR_PREDICTION_LIMIT", name)
    assert main(["setup-prefect", "--work-pool", "vg-test-pool", "--prediction-limit", "1"]) == 0
    provider = ScriptedProvider(delay_s=1.0, paid=True)
    register_provider("scripted", lambda settings: provider)

    # Prefect's events worker, if this is the process's first event, opens its websocket to the server
    # itself: the proxy only passes HTTP.
    emit_event(event="tests.slot-lending.start", resource={"prefect.resource.id": "tests.slot-lending"})
    with (
        RecordingProxy(str(PREFECT_API_URL.value()), slow_paths={INCREMENT: 1.0}) as proxy,
        temporary_settings({PREFECT_API_URL: proxy.api_url}),
    ):
        state = generate_video_clips(
            job(7), GenerationOptions(model="veo-3.1", concurrency=5), "scripted", "local", return_state=True
        )
        # The last slot is kept a moment for a next clip (IDLE_S), then given back (through the proxy).
        wait_until(lambda: active_slots(name) == 0, timeout_s=20, poll_s=0.1)

    assert state.is_completed() and state.message == "7/7 clips"
    assert provider.max_in_flight == 1
    asked = [r for r in proxy.requests if r.path.endswith(INCREMENT)]
    taken = [r for r in asked if r.status == 200]  # the others were refused (423): the one slot was held
    given_back = [r for r in proxy.requests if r.path.endswith("/v2/concurrency_limits/decrement-with-lease")]
    # 7 predictions: 1 + 4 lends on the first slot taken, then 1 + 1 on the second; without lending, 7, and 7
    # too if a freed slot were given back while a clip's request is on its way (it would take it again).
    assert 2 <= len(taken) <= 3, asked
    assert len(given_back) == len(taken), given_back


INCREMENT = "/v2/concurrency_limits/increment-with-lease"


def active_slots(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots
