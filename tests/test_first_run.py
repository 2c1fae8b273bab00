"""The README's first command works on any machine: beside a ~/.prefect database that a newer Prefect
migrated, the demo runs on a temporary Prefect server whose state lives with the project's data, and
leaves the other database as it was."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_process import newer_prefect_database, run_cli
from tests.conftest import REPO


def test_the_demo_runs_beside_a_newer_prefects_database(tmp_path: Path) -> None:
    home, data_dir, output = tmp_path / "home", tmp_path / "data", tmp_path / "clips.json"
    theirs = newer_prefect_database(home / ".prefect" / "prefect.db")
    before = theirs.read_bytes()

    done = run_cli("run", "examples/job.json", "--output", str(output), home=home, data_dir=data_dir)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Completed: 6/6 clips" in done.stdout
    assert "Traceback" not in done.stderr
    assert json.loads(output.read_text())["successful_clips"] == 6
    # The other Prefect's database: same bytes, and nothing added beside it.
    assert theirs.read_bytes() == before
    assert sorted(p.name for p in theirs.parent.iterdir()) == ["prefect.db"]
    # The temporary server's state is the project's.
    assert f"state in {data_dir / 'prefect'}" in done.stdout
    assert (data_dir / "prefect" / "prefect.db").is_file()


def test_the_readme_quickstart_names_the_command_and_where_prefect_keeps_state() -> None:
    readme = (REPO / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/video-generator run examples/job.json" in quickstart
    assert ".video-generator/prefect" in quickstart and "PREFECT_API_URL" in quickstart
