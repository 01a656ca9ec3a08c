"""Every test runs with its own host directories: records are sealed with a test key and locks taken
in a test run directory, never /var/lib/hpkg or /run/hpkg of the machine running the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

_HOST_DIRS = ("HPKG_STATE_DIR", "HPKG_RUN_DIR")
# The one Wine prefix of a run (tests/pe): its directory is made here and shared by the xdist workers;
# the prefix itself (~700 MB) is made on first use and removed with its directory at the end.
_WINE_DIR = "HPKG_TEST_WINEPREFIX"
_created: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # Set before any test module is imported, so that child processes (the CLI under test,
    # xdist workers) inherit them; a test that needs others sets its own with monkeypatch.
    for name in _HOST_DIRS:
        if name not in os.environ:
            directory = tempfile.mkdtemp(prefix=f"{name.lower()}-")
            _created.append(directory)
            os.environ[name] = directory
    if _WINE_DIR not in os.environ:
        os.environ[_WINE_DIR] = tempfile.mkdtemp(prefix="hpkg-wine-")
        _created.append(os.environ[_WINE_DIR])


def pytest_unconfigure(config: pytest.Config) -> None:
    wine_dir = os.environ.get(_WINE_DIR)
    if wine_dir in _created and os.path.isdir(os.path.join(wine_dir, "prefix")):
        # Every test process has ended (this is the run's first process): stop the prefix's own
        # wineserver and its services before their files go.
        env = {**os.environ, "WINEPREFIX": os.path.join(wine_dir, "prefix")}
        subprocess.run(["wineserver", "-k"], env=env, capture_output=True, check=False)
        subprocess.run(["wineserver", "-w"], env=env, capture_output=True, check=False)
    for directory in _created:
        shutil.rmtree(directory, ignore_errors=True)
