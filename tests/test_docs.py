"""The README stays short, and what the README and docs/ point at is there: every relative Markdown link names
a file in the repository, a link to a heading (`page.md#heading`) a heading that page has, every file or
module a page names in code exists, and the settings table lists every setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clipgen.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) outside code: the target up to the first space or ')'; images (![..](..)) too.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(page: Path) -> str:
    """The page without code blocks and code spans, where brackets are code, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))


def _relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page)) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def _anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.MULTILINE)
    return {_anchor(h) for h in headings}


def test_the_docs_exist() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "running-jobs.md", "architecture.md", "configuration.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def test_the_readme_is_short_and_links_to_every_page() -> None:
    readme = REPO / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) <= 160
    linked = {target.partition("#")[0] for target in _relative_links(readme)}
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in linked, f"README.md does not link docs/{page.name}"


PACKAGES = "clipgen|tasks|flows|deployments|commands|staging|tests|benchmarks|scripts|supabase|examples"
# A repository path: clipgen/media.py, staging/fake_replicate/ (a placeholder such as <hex> ends it).
NAMED_PATH = re.compile(rf"\b((?:{PACKAGES})/[\w./-]*)")
# A module: clipgen.server.create_app names clipgen/server.py.
NAMED_MODULE = re.compile(r"\b((?:clipgen|tasks|flows|deployments|commands|staging)\.[a-z_]+)\b(?!\.md)")


def _named(page: Path) -> tuple[set[str], set[str]]:
    """The paths and modules the page's code spans name."""
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", page.read_text(encoding="utf-8")))
    paths = {path for span in spans for path in NAMED_PATH.findall(span)}
    return paths, {module for span in spans for module in NAMED_MODULE.findall(span)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_file_and_module_a_page_names_exists(page: Path) -> None:
    """Code moves (clipgen/cli.py became commands/); a page that names the old place is wrong."""
    paths, modules = _named(page)
    missing = [path for path in paths if not (REPO / path.split(":")[0]).exists()]
    for module in modules:
        package, name = module.split(".")
        if not ((REPO / package / f"{name}.py").exists() or (REPO / package / name).is_dir()):
            missing.append(module)
    assert not missing, f"{page.relative_to(REPO)} names what the repository does not have: {sorted(missing)}"


def test_the_settings_table_lists_every_setting() -> None:
    table = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    names = [str(field.validation_alias) for field in Settings.model_fields.values()]
    assert names, "Settings has no fields"
    missing = [name for name in names if f"| `{name}` |" not in table]
    assert not missing, f"docs/configuration.md does not list {missing}"


def test_the_model_tables_are_the_catalog() -> None:
    """docs/models.md's tables are generated from the catalog (clipgen/model_table.py), so a model added or
    changed in clipgen/catalog.py shows in the docs, or this fails."""
    from clipgen.catalog import MODELS
    from clipgen.model_table import COMMAND, PAGE, rewrite

    page = PAGE.read_text(encoding="utf-8")
    assert rewrite(page, list(MODELS.values())) == page, (
        f"docs/models.md's generated tables differ from clipgen/catalog.py: run `{COMMAND}` to rewrite them"
    )
    for spec in MODELS.values():
        assert f"| `{spec.key}` |" in page, spec.key


def test_a_model_without_a_known_price_shows_unknown() -> None:
    from clipgen.catalog import MODELS
    from clipgen.model_table import catalog_table

    unpriced = [spec for spec in MODELS.values() if not spec.price_known]
    assert unpriced, "the catalog has no model without a price; this test has nothing to show"
    table = catalog_table(unpriced).splitlines()[2:]
    assert all("| unknown |" in row and "$" not in row.split("|")[7] for row in table)
