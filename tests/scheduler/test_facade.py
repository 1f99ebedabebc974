"""The scheduler's facade (``scheduler/__init__.py``): what ``api_shim`` may use."""

from __future__ import annotations

import inspect

import pytest

import scheduler
from tests.fixtures.imports import modules_loaded_by


def test_every_exported_name_resolves() -> None:
    for name in scheduler.__all__:
        assert getattr(scheduler, name) is not None, name


def test_all_is_exactly_what_the_facade_exports() -> None:
    """Once every name is resolved, the package's public attributes, submodules aside, are
    ``__all__``: nothing exported unlisted, nothing listed that is not exported."""
    for name in scheduler.__all__:
        getattr(scheduler, name)
    exported = {
        name
        for name, value in vars(scheduler).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert exported == set(scheduler.__all__)
    assert scheduler.__all__ == sorted(scheduler.__all__, key=str.casefold)
    assert set(scheduler.__all__) <= set(dir(scheduler))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        scheduler.Nothing  # noqa: B018


def test_importing_the_facade_loads_no_room() -> None:
    """Names are imported on first use: the facade alone costs nothing."""
    loaded = modules_loaded_by("import scheduler")
    assert not {name for name in loaded if name.startswith("scheduler.")}
