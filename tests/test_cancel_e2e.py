"""Cancelling a run in Prefect stops what it paid for: a deployment run on a process worker, three hung
predictions on the fake Replicate API, a cancel through the API (as the UI's Cancel button does)."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import uuid4

from prefect.states import Cancelling

from clipgen.stores.local import LocalStore
from staging.fake_replicate.server import FakeReplicateServer, Fault
from tests.prefect_stack import ON_DEMAND, PrefectStack

pytest_plugins = ["tests.prefect_stack"]


def test_cancelling_a_run_cancels_its_predictions(prefect_stack: PrefectStack, tmp_path: Path) -> None:
    tag = uuid4().hex
    data_dir = tmp_path / "cancel-data"
    with FakeReplicateServer(token="cancel-token", latency_s=0.2) as fake:
        fake.add_fault(Fault(kind="hang", match=tag, times=-1))
        env = {
            "REPLICATE_API_TOKEN": "cancel-token",
            "REPLICATE_BASE_URL": fake.base_url,
            "REPLICATE_POLL_INTERVAL": "0.2",
            "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
        }
        prefect_stack.start_worker("cancel", work_queue="cancel", env=env)
        job_id = uuid4()
        job = {
            "job_id": str(job_id),
            "clip_prompts": [{"clip_index": i, "prompt": f"{tag} {i}", "duration": 4.0} for i in range(3)],
        }
        run = prefect_stack.create_flow_run(
            ON_DEMAND,
            {"job": job, "options": {"model": "veo-3.1", "clip_timeout_s": 600}, "provider": "replicate"},
            work_queue_name="cancel",
        )
        deadline = time.monotonic() + 120
        while len([p for p in fake.predictions if tag in p["input"]["prompt"]]) < 3:
            assert time.monotonic() < deadline, prefect_stack.flow_run_logs(run.id)
            time.sleep(0.2)

        with prefect_stack.client() as client:
            client.set_flow_run_state(run.id, Cancelling(message="cancelled by the test"), force=True)
        ended = prefect_stack.wait_for_flow_run(run.id, timeout=120)

        assert ended.state is not None and ended.state.is_cancelled(), ended.state
        deadline = time.monotonic() + 30
        while (statuses := [p["status"] for p in fake.predictions if tag in p["input"]["prompt"]]) != [
            "canceled"
        ] * 3:
            assert time.monotonic() < deadline, (statuses, prefect_stack.flow_run_logs(run.id))
            time.sleep(0.2)
        assert fake.in_flight == 0
    ledger = LocalStore(data_dir).predictions(job_id)
    assert [p.status for p in ledger] == ["canceled"] * 3
