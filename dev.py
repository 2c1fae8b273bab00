#!/usr/bin/env python3
"""Set up and run video-generator with nothing but Python 3.11+.

    python3 dev.py demo     # create .venv, install, run the example job on the embedded default
                            # (then the command is .venv/bin/video-generator)
    python3 dev.py test     # create .venv, install with test tools, run the test suite
    python3 dev.py check    # ruff and mypy
    python3 dev.py docs     # rewrite docs/models.md's generated tables from the catalog (clipgen/catalog.py)

Installs are pinned by constraints.txt and skipped when nothing changed since the last one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed"


def setup() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"video-generator needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes())
    if STAMP.exists() and STAMP.read_text() == wanted.hexdigest():
        return
    print("installing dependencies (first run takes a minute or two) ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", "constraints.txt", "-e", ".[dev]"], cwd=ROOT, check=True)
    STAMP.write_text(wanted.hexdigest())


def run(*command: str) -> int:
    return subprocess.run(command, cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "check", "docs"}:
        print(__doc__)
        return 2
    setup()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        code = run(
            str(BIN / "video-generator"),
            "run",
            "examples/job.json",
            "--output",
            "out/example-clips.json",
            *rest,
        )
        command_path = BIN.relative_to(ROOT) / "video-generator"
        activate = r".venv\Scripts\activate" if os.name == "nt" else "source .venv/bin/activate"
        print(f"\nThe command is {command_path}, or `video-generator` after `{activate}`.")
        print(f"Next: {command_path} --help")
        return code
    if command == "test":
        return run(str(BIN / "python"), "-m", "pytest", *rest)
    if command == "docs":
        return run(str(BIN / "python"), "-m", "clipgen.model_table", *rest)
    return (
        run(str(BIN / "ruff"), "check", ".")
        or run(str(BIN / "ruff"), "format", "--check", ".")
        or run(str(BIN / "mypy"))
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
