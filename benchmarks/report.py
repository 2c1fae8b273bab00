"""Figures, and how they are published: a markdown table on stdout and a JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import median

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Figure:
    """One published number: the median of `runs` (one value per run), and what it should be."""

    key: str
    label: str
    unit: str
    runs: tuple[float, ...]
    at_most: float | None = None
    at_least: float | None = None
    how: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return median(self.runs)

    @property
    def target(self) -> str:
        if self.at_most is not None:
            return f"≤ {_number(self.at_most, self.unit)}"
        if self.at_least is not None:
            return f"≥ {_number(self.at_least, self.unit)}"
        return ""

    @property
    def met(self) -> bool | None:
        """None when the figure has no target (context for the others)."""
        if self.at_most is not None:
            return self.value <= self.at_most
        if self.at_least is not None:
            return self.value >= self.at_least
        return None

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"value": self.value, "target": self.target or None, "met": self.met}


def figure(key: str, label: str, unit: str, runs: list[float], **extra: Any) -> Figure:
    if not runs:
        raise ValueError(f"{key}: no runs")
    return Figure(key, label, unit, tuple(runs), **extra)


def _number(value: float, unit: str) -> str:
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "%":
        return f"{value:.1f} %"
    if unit in ("ms", "MB"):
        return f"{value:.0f} {unit}" if abs(value) >= 10 else f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}".rstrip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def format_table(figures: list[Figure]) -> str:
    lines = [
        "| Figure | Median | Runs | Target | Met | How |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for item in figures:
        met = {True: "met", False: "**missed**", None: ""}[item.met]
        runs = ", ".join(_number(run, item.unit) for run in item.runs)
        row = (item.label, _number(item.value, item.unit), runs, item.target, met, item.how)
        lines.append("| " + " | ".join(_cell(text) for text in row) + " |")
    return "\n".join(lines)


def format_cost_table(rows: list[dict[str, Any]]) -> str:
    """benchmarks/cost.py's rows; money the catalog cannot price (None) shows as "unknown", not $0."""
    lines = [
        "| Model | Price | Scene image | Clips | Target s | Requested s | Requested / target "
        "| Paid beyond target | Estimate | Sum of clip costs | Sum / estimate | Delivered s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        run = row.get("flow")
        cells = [
            row["model"],
            row["price"],
            "yes" if row["scene_image"] else "no",
            str(row["clips"]),
            f"{row['target_s']:.1f}",
            f"{row['requested_s']:.2f}",
            f"{row['requested_per_target']:.3f}",
            _usd(row["paid_beyond_target_usd"]),
            _usd(row["estimate_usd"]),
            _usd(run["total_cost_usd"]) if run else "not run",
            f"{run['total_per_estimate']:.3f}" if run and run["total_per_estimate"] is not None else "",
            f"{run['delivered_s']:.2f}" if run else "",
        ]
        lines.append("| " + " | ".join(_cell(text) for text in cells) + " |")
    return "\n".join(lines)


def _usd(amount: float | None) -> str:
    return "unknown" if amount is None else f"${amount:.3f}"


def format_machine(machine: dict[str, Any]) -> str:
    return "\n".join(f"- {name}: {value}" for name, value in machine.items())


def load_average() -> float | None:
    """The 1-minute load average: other work on the machine skews every timing (None where unknown)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def describe_machine(load_at_start: float | None) -> dict[str, Any]:
    """What the figures depend on: CPU, memory, OS, Python and the libraries doing the work, and how busy
    the machine was at the start and the end."""
    import av
    import prefect

    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "prefect": prefect.__version__,
        "pyav": av.__version__,
        "ffmpeg": av.ffmpeg_version_info,
        "commit": _commit(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _commit() -> str:
    """The checkout measured, `+dirty` when it has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
