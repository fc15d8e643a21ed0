"""The package version is written once, in pyproject.toml."""

from __future__ import annotations

import importlib.metadata

import eventcore


def test_the_version_comes_from_the_installed_metadata() -> None:
    assert eventcore.__version__ == importlib.metadata.version("eventcore")
