"""Settings that name something that cannot be opened are a ConfigurationError (clipgen/errors.py), one type
for the CLI to catch, and nothing is contacted: an unknown name, a `module:factory` that does not import
or has no such factory, missing credentials."""

from __future__ import annotations

import pytest

from clipgen.backends import open_provider, open_store
from clipgen.errors import ConfigurationError
from clipgen.settings import Settings


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nosuch", "unknown provider 'nosuch'"),
        ("clipgen_nosuch_module:factory", "cannot import 'clipgen_nosuch_module'"),
        ("clipgen.backends:nosuch_factory", "has no 'nosuch_factory'"),
    ],
)
def test_a_provider_name_that_names_nothing(name: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_provider(name, Settings())


def test_a_store_name_that_names_nothing() -> None:
    with pytest.raises(ConfigurationError, match="unknown store 'nosuch'"):
        open_store("nosuch", Settings())


def test_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REPLICATE_API_TOKEN", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="REPLICATE_API_TOKEN is not set"):
        open_provider("replicate", Settings())
    with pytest.raises(ConfigurationError, match="SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY must be set"):
        open_store("supabase", Settings())


def test_a_malformed_supabase_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "not a url")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "key")
    with pytest.raises(ConfigurationError, match="SUPABASE_URL"):
        open_store("supabase", Settings())


def test_it_is_still_a_value_error_for_callers_that_catch_that() -> None:
    assert issubclass(ConfigurationError, ValueError)
