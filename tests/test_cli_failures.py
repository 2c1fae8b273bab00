"""Operational failures end with a paragraph (what failed, the likely cause, what to do) and an exit code
of their own, never a traceback unless --verbose. Each fault is real: a closed port, a server that is not
Prefect, a Prefect server refusing the run, a temporary server that cannot start, a store that is down or
refuses the key. The command runs as a user runs it: its own process, a clean environment."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import pytest

from clipgen.failures import (
    EXIT_INTERRUPTED,
    EXIT_PREFECT_DATABASE,
    EXIT_PREFECT_REFUSED,
    EXIT_PREFECT_UNAVAILABLE,
    EXIT_STORE_UNAVAILABLE,
)
from staging.fake_replicate.server import FakeReplicateServer
from tests.cli_process import (
    UNKNOWN_REVISION,
    alembic_revision,
    clean_env,
    closed_port,
    command,
    newer_prefect_database,
    run_cli,
)
from tests.conftest import REPO, SupabaseStack, write_job


def small_job(path: Path, **metadata: object) -> Path:
    """Two clips without images: nothing to upload, so the store is first called by the run itself."""
    prompts = [
        {"clip_index": i, "prompt": f"a lighthouse at dusk {i}", "duration": 3.0, "metadata": metadata}
        for i in range(2)
    ]
    return write_job(path, {"job_id": str(uuid4()), "clip_prompts": prompts})


def assert_explained(
    done: subprocess.CompletedProcess[str], code: int, *phrases: str, verbose: bool = False
) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    err = " ".join(done.stderr.split())  # the paragraph is wrapped to the terminal
    assert "Likely cause:" in err and "What to do:" in err and f"exit code {code}" in err, err
    for phrase in phrases:
        assert phrase in err, err
    assert ("Traceback" in err) is verbose, err


@pytest.mark.parametrize("verbose", [False, True])
def test_prefect_api_that_does_not_answer(tmp_path: Path, verbose: bool) -> None:
    url = f"http://127.0.0.1:{closed_port()}/api"
    flags = ["--verbose"] if verbose else []
    done = run_cli(
        *flags,
        "run",
        str(small_job(tmp_path / "job.json")),
        home=tmp_path / "home",
        data_dir=tmp_path / "data",
        env={"PREFECT_API_URL": url},
    )
    assert_explained(
        done, EXIT_PREFECT_UNAVAILABLE, f"Nothing answers at the Prefect API at {url}", verbose=verbose
    )


def test_prefect_api_url_that_is_not_prefect(tmp_path: Path) -> None:
    with FakeReplicateServer() as other_service:
        done = run_cli(
            "run",
            str(small_job(tmp_path / "job.json")),
            "--verbose",  # after the command works too
            home=tmp_path / "home",
            data_dir=tmp_path / "data",
            env={"PREFECT_API_URL": f"{other_service.base_url}/api"},
        )
    assert_explained(
        done, EXIT_PREFECT_REFUSED, "refused a request: 404", "does not point at a Prefect API", verbose=True
    )


@pytest.mark.usefixtures("prefect_server")
def test_prefect_refusing_the_run(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    # Valid for us, too large for Prefect: a flow run's parameters must stay under 512 KB.
    job = small_job(tmp_path / "job.json", notes="x" * 600_000)
    done = run_cli(
        "run",
        str(job),
        home=tmp_path / "home",
        data_dir=tmp_path / "data",
        env={"PREFECT_API_URL": str(PREFECT_API_URL.value())},
    )
    assert_explained(done, EXIT_PREFECT_REFUSED, "refused a request: 422", "512 KB")


def test_temporary_server_that_does_not_start_in_time(tmp_path: Path) -> None:
    done = run_cli(
        "run",
        str(small_job(tmp_path / "job.json")),
        home=tmp_path / "home",
        data_dir=tmp_path / "data",
        env={
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"
        },  # Python alone takes longer to start it
    )
    assert_explained(
        done,
        EXIT_PREFECT_UNAVAILABLE,
        "temporary server did not answer within 1 s",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
    )


@pytest.mark.parametrize("verbose", [False, True])
def test_temporary_server_database_of_a_newer_prefect(tmp_path: Path, verbose: bool) -> None:
    data_dir = tmp_path / "data"
    database = newer_prefect_database(data_dir / "prefect" / "prefect.db")
    flags = ["--verbose"] if verbose else []
    done = run_cli(
        *flags, "run", str(small_job(tmp_path / "job.json")), home=tmp_path / "home", data_dir=data_dir
    )

    assert_explained(done, EXIT_PREFECT_DATABASE, str(database), UNKNOWN_REVISION, "move", verbose=verbose)
    assert alembic_revision(database) == UNKNOWN_REVISION  # not migrated
    if verbose:  # the server's own words come with the traceback
        assert f"Can't locate revision identified by '{UNKNOWN_REVISION}'" in done.stderr
    else:
        assert len(done.stderr.splitlines()) < 12


def test_store_that_does_not_answer(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    done = run_cli(
        "run",
        str(small_job(tmp_path / "job.json")),
        "--store",
        "supabase",
        home=tmp_path / "home",
        data_dir=tmp_path / "data",
        env={"SUPABASE_URL": url, "SUPABASE_SERVICE_ROLE_KEY": "a-key"},
    )
    assert_explained(
        done, EXIT_STORE_UNAVAILABLE, f"The Supabase store at {url} does not answer", "SUPABASE_URL"
    )


def test_store_that_refuses_the_key(tmp_path: Path, supabase_stack: SupabaseStack) -> None:
    done = run_cli(
        "run",
        str(small_job(tmp_path / "job.json")),
        "--store",
        "supabase",
        home=tmp_path / "home",
        data_dir=tmp_path / "data",
        env={"SUPABASE_URL": supabase_stack.url, "SUPABASE_SERVICE_ROLE_KEY": supabase_stack.anon_key},
    )
    assert_explained(done, EXIT_STORE_UNAVAILABLE, "refused the first request", "SUPABASE_SERVICE_ROLE_KEY")


@contextmanager
def ctrl_c_reaches_children() -> Iterator[None]:
    """Children started here get SIGINT as in a terminal. A test run started in the background (`cmd &`,
    `nohup`) may ignore SIGINT, and an ignored signal stays ignored across exec: the command then never sees
    the Ctrl-C (a clean-clone CI run started so: the job finished, exit 0). A handled one is reset at exec."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def test_interrupted_while_prefect_starts(tmp_path: Path) -> None:
    with ctrl_c_reaches_children():
        process = subprocess.Popen(
            command("run", str(small_job(tmp_path / "job.json"))),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=clean_env(tmp_path / "home", tmp_path / "data"),
        )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("starting a temporary Prefect server"):
            break
    process.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = process.communicate(timeout=120)

    assert process.returncode == EXIT_INTERRUPTED, err
    assert "video-generator: interrupted" in err and "Traceback" not in err, err


def test_top_level_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from commands.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "turn one job's clip prompts" in text
    for name in ("run", "submit", "setup-prefect", "serve", "fake-replicate"):
        assert f"\n    {name}" in text, text
    for code in ("0", "1", "2", "3", "4", "5", "6", "130"):
        assert f"\n  {code} " in text, text
    assert "README.md" in text
