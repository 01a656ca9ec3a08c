"""The loader's host directories are private: created 0700, and refused when planted or loosened."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpkg.errors import TargetError
from hpkg.loader.hostdirs import private_dir, run_dir, state_dir


def test_private_dir_is_created_with_mode_0700(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "a" / "hpkg")
    assert made.is_dir()
    assert os.stat(made).st_mode & 0o777 == 0o700


def test_a_symlink_planted_at_the_directory_is_refused_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    planted = tmp_path / "hpkg"
    planted.symlink_to(elsewhere)
    with pytest.raises(TargetError, match="not a directory"):
        private_dir(planted)


def test_a_group_or_world_writable_directory_is_refused_with_the_chmod(tmp_path: Path) -> None:
    loose = tmp_path / "hpkg"
    loose.mkdir()
    os.chmod(loose, 0o777)
    with pytest.raises(TargetError, match="chmod 700"):
        private_dir(loose)


def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root to give a directory to another user")
    foreign = tmp_path / "hpkg"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(TargetError, match="belongs to uid 65534"):
        private_dir(foreign)


def test_environment_overrides_choose_the_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPKG_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("HPKG_STATE_DIR", str(tmp_path / "state"))
    assert run_dir() == tmp_path / "run"
    assert state_dir() == tmp_path / "state"
