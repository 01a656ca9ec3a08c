"""Every test runs with its own host directories: records are sealed with a test key and locks taken
in a test run directory, never /var/lib/hpkg or /run/hpkg of the machine running the suite."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_HOST_DIRS = ("HPKG_STATE_DIR", "HPKG_RUN_DIR")
_created: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # Set before any test module is imported, so that child processes (the CLI under test,
    # xdist workers) inherit them; a test that needs others sets its own with monkeypatch.
    for name in _HOST_DIRS:
        if name not in os.environ:
            directory = tempfile.mkdtemp(prefix=f"{name.lower()}-")
            _created.append(directory)
            os.environ[name] = directory


def pytest_unconfigure(config: pytest.Config) -> None:
    for directory in _created:
        shutil.rmtree(directory, ignore_errors=True)
