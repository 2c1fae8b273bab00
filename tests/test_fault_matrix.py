"""The fault matrix (issues 7 and 13), asserted: for every fault the fake Replicate API can script, plus a
storage outage and `kill -9` of the flow process, and for runs of one job that meet (at once; a lost create
while the prediction list is down, then a rerun; storage down for a whole run, then another worker; a
preview, then the paid run), a 6-clip job through the real flow loses no paid clip, pays no clip twice,
leaves nothing running, and delivers `min_success` clips wherever the fault allows it.

The scenarios and the measurements are `benchmarks/faults.py`'s, which prints the same rows as a table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.faults import (
    CLIPS,
    MIN_SUCCESS,
    SCENARIOS,
    Row,
    Scenario,
    format_table,
    requirement_problems,
    run_scenario,
    start_fake,
)
from staging.fake_replicate.server import FakeReplicateServer


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with start_fake() as server:
        yield server


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fault(scenario: Scenario, fake: FakeReplicateServer, data_dir: Path) -> None:
    row = run_scenario(scenario, fake, data_dir)
    table = format_table([row])
    assert row.lost == 0, table
    assert row.duplicates == 0, table
    assert row.running_at_end == 0, table
    if scenario.min_success_reachable:
        assert row.min_success_met == "yes" and row.delivered >= MIN_SUCCESS, table
    assert row.ok, table


def test_the_table_renders() -> None:
    good = Row(
        scenario="hung", fault="first prediction | never ends", state="Completed", clips=CLIPS, delivered=6,
        created=8, billed=8, failed=0, canceled=2, running_at_end=0, duplicates=0, repaid_unusable=0, lost=0,
        min_success_met="yes", seconds=4.2,
    )  # fmt: skip
    bad = Row(
        scenario="kill", fault="kill -9", state="Completed", clips=CLIPS, delivered=6, created=7, billed=7,
        failed=0, canceled=0, running_at_end=1, duplicates=1, repaid_unusable=0, lost=0,
        min_success_met="yes", seconds=12.0, note="the killed run created 1",
    )  # fmt: skip
    bad = replace(bad, problems=tuple(requirement_problems(bad)))

    table = format_table([good, bad]).splitlines()

    assert table[0].startswith("| Scenario | Fault |") and table[0].count("|") == table[1].count("|")
    assert all(line.count("|") - line.count("\\|") == table[0].count("|") for line in table[2:4])
    assert "first prediction \\| never ends" in table[2] and table[2].endswith("| ok |")
    assert "| 6/6 | 7 | 7 |" in table[3]
    assert "FAIL: 1 clip(s) paid twice; 1 prediction(s) left running" in table[3]
    assert table[-1] == "- kill: the killed run created 1"
