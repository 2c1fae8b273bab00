"""What a command is given: a provider or store that cannot be opened is a refusal naming the flag; a bug
inside a factory is not disguised as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipgen.backends import register_provider, register_store
from clipgen.providers.base import VideoProvider
from clipgen.settings import Settings
from clipgen.stores.base import ClipStore
from commands.cli import main


def buggy_provider(settings: Settings) -> VideoProvider:
    return settings.no_such_setting  # type: ignore[attr-defined, no-any-return]  # the bug


def buggy_store(settings: Settings) -> ClipStore:
    return settings.no_such_setting  # type: ignore[attr-defined, no-any-return]


@pytest.mark.usefixtures("data_dir")
def test_a_bug_in_a_provider_factory_is_raised_not_refused_as_a_flag(example_job: Path) -> None:
    register_provider("buggy-provider", buggy_provider)
    with pytest.raises(AttributeError, match="no_such_setting"):
        main(["run", str(example_job), "--provider", "buggy-provider"])


@pytest.mark.usefixtures("data_dir")
def test_a_bug_in_a_store_factory_is_raised_not_refused_as_a_flag(example_job: Path) -> None:
    register_store("buggy-store", buggy_store)
    with pytest.raises(AttributeError, match="no_such_setting"):
        main(["submit", str(example_job), "--store", "buggy-store"])


@pytest.mark.usefixtures("data_dir")
def test_an_unknown_provider_is_refused_naming_the_flags(
    example_job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(example_job), "--provider", "no-such-provider"]) == 2
    err = capsys.readouterr().err
    assert "--provider/--store" in err and "unknown provider 'no-such-provider'" in err
