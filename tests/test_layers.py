"""The layers: the core imports nothing above it, imports between the top-level packages point down only, and
staging (the fake Replicate API, the test server thread) stays out of the product and its dependencies.

    clipgen < tasks < flows < deployments < commands;  staging imports clipgen only; nothing but commands
    (the `fake-replicate` command) imports staging.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import clipgen
from tests.conftest import REPO

LAYERS = ("clipgen", "tasks", "flows", "deployments", "commands")
MAY_IMPORT: dict[str, frozenset[str]] = {
    package: frozenset(LAYERS[:rank]) for rank, package in enumerate(LAYERS)
} | {"staging": frozenset({"clipgen"})}
# `video-generator fake-replicate` starts the fake: the one import of staging from the product.
MAY_IMPORT["commands"] |= {"staging"}
ABOVE_THE_CORE = frozenset({"prefect", *LAYERS[1:], "staging"})

IMPORT_REPORT = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({name for name in sys.modules if name.split(".")[0] in set(sys.argv[2:])})))
"""


def core_modules() -> list[str]:
    found = pkgutil.walk_packages(clipgen.__path__, prefix="clipgen.")
    return ["clipgen", *sorted(module.name for module in found)]


def modules_loaded_by(module: str) -> list[str]:
    """What `import <module>` loads from above the core, in an interpreter of its own."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_REPORT, module, *sorted(ABOVE_THE_CORE)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"import {module} failed:\n{done.stderr}"
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_every_core_module_imports_without_anything_above_it() -> None:
    modules = core_modules()
    assert "clipgen.job_files" in modules and "clipgen.stores.local" in modules  # the walk found the package
    # A fresh interpreter per module (what one module loads must not hide what another does), a few at once.
    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = dict(zip(modules, pool.map(modules_loaded_by, modules), strict=True))
    assert {module: above for module, above in loaded.items() if above} == {}


def package_imports(package: str) -> Iterator[tuple[str, int, str]]:
    """(file, line, top-level package) for every absolute import in `package`'s source, lazy and
    TYPE_CHECKING ones included; a `if __name__ == "__main__":` block is skipped: it runs only when the file
    is the program, never when it is imported."""
    for file in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(_without_main_blocks(tree)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue  # relative imports stay inside their package
            for name in names:
                yield str(file.relative_to(REPO)), node.lineno, name.split(".")[0]


def _without_main_blocks(tree: ast.Module) -> ast.Module:
    tree.body = [statement for statement in tree.body if not _is_main_block(statement)]
    return tree


def _is_main_block(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.If) and ast.unparse(statement.test) in (
        "__name__ == '__main__'",
        "'__main__' == __name__",
    )


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_point_down_only(package: str) -> None:
    ours = set(MAY_IMPORT)
    upward = [
        f"{file}:{line} imports {target}"
        for file, line, target in package_imports(package)
        if target in ours and target != package and target not in MAY_IMPORT[package]
    ]
    assert upward == []


def test_the_product_packages_hold_no_staging_code() -> None:
    assert not (REPO / "clipgen" / "fake_replicate").exists()
    assert not (REPO / "clipgen" / "serving.py").exists()


def test_python_multipart_is_required_by_the_staging_extra_only() -> None:
    from importlib.metadata import requires

    requirements = [Requirement(line) for line in requires("video-generator") or []]
    multipart = [req for req in requirements if req.name == "python-multipart"]
    assert multipart, "python-multipart is not declared at all"
    unconditional = [
        str(req) for req in multipart if req.marker is None or req.marker.evaluate({"extra": ""})
    ]
    assert unconditional == [], "installed by `pip install .` without an extra"
    assert any(req.marker and req.marker.evaluate({"extra": "staging"}) for req in multipart)
    # dev installs (dev.py, CI) run the fake, so they bring the extra (the build writes its requirements out).
    assert any(req.marker and req.marker.evaluate({"extra": "dev"}) for req in multipart)


def test_a_plain_install_brings_no_staging_dependency() -> None:
    """What `pip install .` installs here: the product's requirements without extras, and theirs, followed
    through the installed distributions' metadata (markers evaluated for this interpreter)."""
    installed = installed_by("video-generator")
    assert {"prefect", "fastapi", "starlette"} <= installed  # the walk follows requirements' requirements
    assert "python-multipart" not in installed


def installed_by(distribution: str) -> set[str]:
    from importlib.metadata import PackageNotFoundError, requires

    found: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(distribution, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            continue  # not installed here, so nothing of it was needed
        for req in map(Requirement, lines):
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                found.add(canonicalize_name(req.name))
                todo.append((req.name, frozenset(req.extras)))
    return found


def test_fake_replicate_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """python-multipart hidden, as if `pip install .` had been run without the extra: a module of each import
    name it has that fails as a missing module does."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for name in ("python_multipart", "multipart"):
        message = f"No module named {name!r}"
        (hidden / f"{name}.py").write_text(f"raise ModuleNotFoundError({message!r}, name={name!r})\n")
    done = subprocess.run(
        [sys.executable, "-m", "commands.cli", "fake-replicate", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), str(REPO)])},
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "video-generator fake-replicate needs the staging extra: pip install 'video-generator[staging]'"
    ]
