"""The queue flow on real Prefect flow runs and the real local store: submit, claim, run, retry, take over."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from clipgen.backends import register_provider, register_store
from clipgen.settings import Settings
from clipgen.stores.local import LocalStore
from commands.cli import main
from flows.job_queue import process_job_queue
from tests.doubles import PERMANENT, ScriptedProvider

pytestmark = pytest.mark.usefixtures("prefect_server")


def job_dict(n: int = 3, job_id: UUID | None = None) -> dict[str, Any]:
    return {
        "job_id": str(job_id or uuid4()),
        "clip_prompts": [{"clip_index": i, "prompt": f"queued clip {i}", "duration": 2.0} for i in range(n)],
    }


def submit(tmp_path: Path, job: dict[str, Any], *flags: str) -> int:
    path = tmp_path / f"{job['job_id']}.json"
    path.write_text(json.dumps(job))
    return main(["submit", str(path), "--model", "veo-3.1", *flags])


def store() -> LocalStore:
    return LocalStore(Settings().data_dir)


def scripted(provider: ScriptedProvider) -> str:
    register_provider("scripted", lambda settings: provider)
    return "scripted"


def test_submitted_jobs_are_each_run_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = [job_dict(), job_dict()]
    for job in jobs:
        assert submit(tmp_path, job) == 0
    assert "queued job" in capsys.readouterr().out
    provider = ScriptedProvider()

    state = process_job_queue(provider=scripted(provider), store="local", return_state=True)

    assert state.is_completed(), state.message
    assert state.message == "2 jobs: 2 succeeded"
    for job in jobs:
        row = store().queued_job(UUID(job["job_id"]))
        assert row is not None
        assert (row.status, row.attempts, row.last_error) == ("succeeded", 1, None)
        records = store().clip_records(UUID(job["job_id"]))
        assert [r.status for r in records] == ["success"] * 3
    assert sum(provider.calls.values()) == 6  # nothing generated twice
    again = process_job_queue(provider="scripted", store="local", return_state=True)
    assert again.message == "no queued jobs"
    assert sum(provider.calls.values()) == 6


def test_submit_checks_the_job_like_run_and_queues_nothing_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = job_dict()
    job["clip_prompts"][1]["duration"] = -4
    assert submit(tmp_path, job) == 2
    assert "clip_prompts[1].duration" in capsys.readouterr().err
    assert submit(tmp_path, job_dict(), "--max-attempts", "0") == 2
    assert process_job_queue(provider="local", store="local", return_state=True).message == "no queued jobs"


def test_a_job_that_keeps_failing_stops_after_max_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIDEO_GENERATOR_QUEUE_RETRY_DELAY_SECONDS", "0")
    job = job_dict()
    assert submit(tmp_path, job, "--max-attempts", "2") == 0
    provider = ScriptedProvider({i: [PERMANENT] for i in range(3)})

    state = process_job_queue(provider=scripted(provider), store="local", return_state=True)

    # The first run fails (too few clips) and is requeued; the second is the last one allowed.
    assert state.message == "2 jobs: 1 failed, 1 requeued"
    row = store().queued_job(UUID(job["job_id"]))
    assert row is not None
    assert (row.status, row.attempts) == ("failed", 2)
    assert row.last_error is not None and "0/3 clips" in row.last_error
    again = process_job_queue(provider="scripted", store="local", return_state=True)
    assert again.message == "no queued jobs"


def test_a_failed_job_waits_for_its_retry_delay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEO_GENERATOR_QUEUE_RETRY_DELAY_SECONDS", "3600")
    job = job_dict()
    assert submit(tmp_path, job) == 0
    provider = ScriptedProvider({i: [PERMANENT] for i in range(3)})
    state = process_job_queue(provider=scripted(provider), store="local", return_state=True)
    assert state.message == "1 job: 1 requeued"
    row = store().queued_job(UUID(job["job_id"]))
    assert row is not None and row.status == "queued" and row.attempts == 1


def test_an_invalid_row_from_an_app_fails_at_once_naming_the_field(tmp_path: Path) -> None:
    job_id = uuid4()
    bad = job_dict(job_id=job_id)
    bad["clip_prompts"][0]["duration"] = "long"
    store().enqueue_job(job_id, bad, None)
    provider = ScriptedProvider()

    state = process_job_queue(provider=scripted(provider), store="local", return_state=True)

    assert state.message == "1 job: 1 failed"
    row = store().queued_job(job_id)
    assert row is not None and (row.status, row.attempts) == ("failed", 1)
    assert row.last_error is not None and "job.clip_prompts[0].duration" in row.last_error
    assert not provider.calls


def test_a_crashed_runs_job_is_taken_over_after_its_lease(tmp_path: Path) -> None:
    job = job_dict()
    assert submit(tmp_path, job) == 0
    # A run that claimed the job and died: nobody renews its short lease (long enough for a queue run to
    # start within it on a busy machine).
    dead = store().claim_job("dead-worker", lease_seconds=8)
    assert dead is not None and dead.lease_expires_at is not None
    provider = ScriptedProvider()
    assert process_job_queue(provider=scripted(provider), store="local", return_state=True).message == (
        "no queued jobs"
    )
    time.sleep(max(0.0, (dead.lease_expires_at - datetime.now(UTC)).total_seconds() + 0.2))

    state = process_job_queue(provider="scripted", store="local", return_state=True)

    assert state.message == "1 job: 1 succeeded"
    row = store().queued_job(UUID(job["job_id"]))
    assert row is not None and (row.status, row.attempts) == ("succeeded", 2)
    assert row.claimed_by != "dead-worker"
    assert dead.claim_token is not None
    assert store().finish_job(dead.job_id, dead.claim_token, succeeded=False, error="late") is None


def test_the_lease_is_renewed_while_a_long_job_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEO_GENERATOR_QUEUE_LEASE_SECONDS", "1")
    job = job_dict(n=2)
    assert submit(tmp_path, job, "--concurrency", "1") == 0
    provider = ScriptedProvider(delay_s=1.2)  # about 2.5 s in all: more than two leases
    stolen: list[object] = []

    def try_to_steal() -> None:
        # From the moment the queue run holds the job until well past its first lease.
        while (row := store().queued_job(UUID(job["job_id"]))) is None or row.status != "running":
            time.sleep(0.05)
        deadline = time.monotonic() + 2.2
        while time.monotonic() < deadline:
            stolen.append(store().claim_job("thief", lease_seconds=60))
            time.sleep(0.2)

    thief = threading.Thread(target=try_to_steal)
    thief.start()
    state = process_job_queue(provider=scripted(provider), store="local", return_state=True)
    thief.join()

    assert state.message == "1 job: 1 succeeded"
    assert not [claim for claim in stolen if claim is not None]
    row = store().queued_job(UUID(job["job_id"]))
    assert row is not None and (row.status, row.attempts) == ("succeeded", 1)


def test_a_running_job_cannot_be_resubmitted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = job_dict()
    assert submit(tmp_path, job) == 0
    assert store().claim_job("someone", lease_seconds=60) is not None
    assert submit(tmp_path, job) == 1
    assert "running" in capsys.readouterr().err


class LosesEveryClaim(LocalStore):
    """The real local store, where another run takes the job over as soon as this one holds it (as after a
    stall longer than the lease): at the first renewal, the claim passes to a thief."""

    def renew_claim(self, job_id: UUID, claim_token: UUID, lease_seconds: float) -> bool:
        thief_lease = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
        with closing(sqlite3.connect(self.db_path, timeout=10)) as conn, conn:
            conn.execute(
                "UPDATE video_jobs SET claim_token = ?, claimed_by = 'thief', lease_expires_at = ? "
                "WHERE job_id = ?",
                (str(uuid4()), thief_lease, str(job_id)),
            )
        return super().renew_claim(job_id, claim_token, lease_seconds)


def test_a_queue_run_that_loses_its_job_stops_working_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_store("loses-every-claim", lambda settings: LosesEveryClaim(settings.data_dir))
    monkeypatch.setenv("VIDEO_GENERATOR_QUEUE_LEASE_SECONDS", "1.5")
    job = job_dict(n=4)
    assert submit(tmp_path, job, "--concurrency", "1") == 0
    provider = ScriptedProvider(delay_s=1.0)  # the first renewal (0.5 s in) is refused mid-clip

    state = process_job_queue(provider=scripted(provider), store="loses-every-claim", return_state=True)

    # A clip under way may finish (it may already be paid for); no clip is started after the claim is lost,
    # and the run that took the job over is left to do them.
    assert sum(provider.calls.values()) <= 1, provider.calls
    assert state.message == "1 job: 1 lost"
    stored = [r for r in store().clip_records(UUID(job["job_id"])) if r.status == "success"]
    assert len(stored) <= 1


def tagged_job(tag: str, n: int = 2) -> dict[str, Any]:
    return {
        "job_id": str(uuid4()),
        "clip_prompts": [{"clip_index": i, "prompt": f"{tag} clip {i}", "duration": 4.0} for i in range(n)],
    }


def test_a_queue_run_works_on_several_jobs_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The oldest job's predictions hang until the others have ended, and a job queued meanwhile has ended
    too: run one at a time, the others would never start. Read from the fake's record and the store, not
    from timings."""
    from staging.fake_replicate.server import FakeReplicateServer, Fault

    monkeypatch.setenv("VIDEO_GENERATOR_QUEUE_JOBS_AT_ONCE", "4")
    monkeypatch.setenv("VIDEO_GENERATOR_QUEUE_RETRY_DELAY_SECONDS", "3600")
    monkeypatch.setenv("VIDEO_GENERATOR_PREDICTION_LIMIT", "")
    slow, quick, failing, late = (
        tagged_job(tag) for tag in ("slow-job", "quick-job", "failing-job", "late-job")
    )
    for job in (slow, quick, failing):  # oldest first: the slow job is claimed first
        assert submit(tmp_path, job, "--concurrency", "2") == 0
    with FakeReplicateServer(token="queue-token", latency_s=0.2) as fake:
        monkeypatch.setenv("REPLICATE_API_TOKEN", "queue-token")
        monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
        monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.1")
        fake.add_fault(
            Fault(kind="hang", match="slow-job", times=2), Fault(kind="fail", match="failing-job", times=-1)
        )
        others_ended_while_slow_hung: list[bool] = []

        def release_the_slow_job() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not _ended(quick, failing):
                time.sleep(0.1)
            # The run has room and found the queue empty; it asks again while its jobs run.
            store().enqueue_job(UUID(late["job_id"]), late, {"model": "veo-3.1", "concurrency": 2})
            while time.monotonic() < deadline and not (ended := _ended(quick, failing, late)):
                time.sleep(0.1)
            hung = [p for p in fake.predictions if "slow-job" in p["input"]["prompt"]]
            others_ended_while_slow_hung.append(
                ended and len(hung) == 2 and all(p["status"] == "processing" for p in hung)
            )
            for prediction in hung:
                fake.state.cancel(prediction["id"])

        releaser = threading.Thread(target=release_the_slow_job)
        releaser.start()
        state = process_job_queue(provider="replicate", store="local", return_state=True)
        releaser.join()

        assert others_ended_while_slow_hung == [True]
        # The slow job's two hung predictions and the next job's first: more than one job's cap of 2.
        assert fake.max_in_flight >= 3
    # Each claimed job is finished in the queue: the cancelled predictions were retried and delivered, the
    # failing job is queued again for its next attempt, as when jobs ran one at a time.
    assert state.message == "4 jobs: 1 requeued, 3 succeeded"
    rows = {job["job_id"]: store().queued_job(UUID(job["job_id"])) for job in (slow, quick, failing, late)}
    assert {key: (row.status, row.attempts) for key, row in rows.items() if row} == {
        slow["job_id"]: ("succeeded", 1),
        quick["job_id"]: ("succeeded", 1),
        failing["job_id"]: ("queued", 1),
        late["job_id"]: ("succeeded", 1),
    }
    failed = rows[failing["job_id"]]
    assert failed is not None and failed.last_error is not None and "0/2 clips" in failed.last_error


def _ended(*jobs: dict[str, Any]) -> bool:
    """Each job was claimed and its run has ended."""
    rows = [store().queued_job(UUID(job["job_id"])) for job in jobs]
    return all(row is not None and row.attempts == 1 and row.status != "running" for row in rows)
