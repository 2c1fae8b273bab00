"""How many jobs a queue run holds at once: the setting, or what the machine can hold (clipgen.queueing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipgen.queueing import (
    JOB_PEAK_BYTES,
    MAX_JOBS_AT_ONCE,
    available_memory_bytes,
    jobs_at_once,
    jobs_the_machine_holds,
)
from clipgen.settings import Settings

GB = 1024**3


def test_the_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEO_GENERATOR_QUEUE_JOBS_AT_ONCE", "3")
    assert jobs_at_once(Settings().queue_jobs_at_once) == 3
    monkeypatch.setenv("VIDEO_GENERATOR_QUEUE_JOBS_AT_ONCE", "0")
    with pytest.raises(ValueError, match="VIDEO_GENERATOR_QUEUE_JOBS_AT_ONCE"):
        Settings()


def test_unset_it_is_what_memory_and_cpus_allow() -> None:
    assert jobs_the_machine_holds(24 * GB, 2) == 8  # four jobs a CPU; memory would allow 76
    assert jobs_the_machine_holds(2 * GB, 16) == 6  # half of 2 GB at 160 MB a job
    assert jobs_the_machine_holds(JOB_PEAK_BYTES, 8) == 1  # never none
    assert jobs_the_machine_holds(None, None) == MAX_JOBS_AT_ONCE
    assert jobs_at_once(None) >= 1


def test_available_memory_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683584 kB\nMemFree:  100 kB\nMemAvailable:   23846340 kB\n")
    assert available_memory_bytes(str(meminfo)) == 23846340 * 1024
    meminfo.write_text("MemTotal:       24683584 kB\n")  # an old kernel: no estimate
    assert available_memory_bytes(str(meminfo)) is None
    assert available_memory_bytes(str(tmp_path / "missing")) is None
