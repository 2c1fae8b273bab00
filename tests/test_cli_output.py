"""What `video-generator run` prints: a rerun that reuses every clip says so and what it paid, and a run on
a Prefect server without the prediction limit says so once, naming the command that creates it."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import pytest

from commands.cli import main
from staging.fake_replicate.server import FakeReplicateServer
from tests.cli_process import run_cli
from tests.conftest import write_job


def three_clips(example_job: Path) -> Path:
    job = json.loads(example_job.read_text())
    job["clip_prompts"] = job["clip_prompts"][:3]
    job["total_clips"] = 3
    return write_job(example_job, job)


@pytest.mark.usefixtures("prefect_server")
def test_a_rerun_says_every_clip_was_reused_and_nothing_paid(
    example_job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = str(three_clips(example_job))
    assert main(["run", job]) == 0
    first = capsys.readouterr().out
    assert first.count(" ok: ") == 3 and " reused: " not in first
    assert "this run: 3 generated, 0 reused" in first

    assert main(["run", job]) == 0
    again = capsys.readouterr().out

    progress = [line for line in again.splitlines() if line.startswith("  [")]
    assert len(progress) == 3
    assert all(" reused: " in line and "stored by an earlier run" in line for line in progress), again
    assert "Completed: 3/3 clips · all reused from earlier runs, none generated now" in again
    assert "this run: 0 generated, 3 reused, paid $0.00" in again


@pytest.mark.usefixtures("prefect_server")
def test_a_missing_prediction_limit_is_one_line_naming_setup_prefect(
    example_job: Path, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    limit = f"missing-{uuid4().hex[:8]}"  # no other test creates it on the session's server
    with FakeReplicateServer(token="limit-token", latency_s=0.1) as fake:
        done = run_cli(
            "run",
            str(three_clips(example_job)),
            "--provider",
            "replicate",
            "--model",
            "veo-3.1",
            home=tmp_path / "home",
            data_dir=tmp_path / "data",
            env={
                "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                "REPLICATE_API_TOKEN": "limit-token",
                "REPLICATE_BASE_URL": fake.base_url,
                "REPLICATE_POLL_INTERVAL": "0.1",
                "VIDEO_GENERATOR_PREDICTION_LIMIT": limit,
            },
        )
        assert fake.creates == 3

    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout + done.stderr
    about_the_limit = [line for line in printed.splitlines() if limit in line]
    assert len(about_the_limit) == 1, printed
    assert "`video-generator setup-prefect` creates it" in about_the_limit[0]
    assert "do not exist" not in printed
