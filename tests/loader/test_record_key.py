"""The record key: made once in the private state directory, 0600, one key even when many hpkg start at
once, and refused (never followed or repaired) when it is a symlink, readable by others or malformed."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from hpkg.errors import TargetError
from hpkg.loader.record_key import KEY_FILE, KEY_SIZE, record_key

RACERS = 8


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "state"
    monkeypatch.setenv("HPKG_STATE_DIR", str(directory))
    return directory


def test_the_key_is_made_once_private(state: Path) -> None:
    key = record_key()
    info = os.lstat(state / KEY_FILE)
    assert len(key) == KEY_SIZE and stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert record_key() == key
    assert sorted(os.listdir(state)) == [KEY_FILE]


def _race(barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    barrier.wait()
    results.put(record_key())


def test_hpkg_started_at_once_share_one_key(state: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(RACERS), context.Queue()
    racers = [context.Process(target=_race, args=(barrier, results)) for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    keys = {results.get(timeout=60) for _ in racers}
    for racer in racers:
        racer.join()
        assert racer.exitcode == 0
    assert keys == {(state / KEY_FILE).read_bytes()}
    assert sorted(os.listdir(state)) == [KEY_FILE]  # no temporary file left behind


def test_a_symlink_at_the_key_is_refused_not_followed(state: Path, tmp_path: Path) -> None:
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * KEY_SIZE)
    victim.chmod(0o600)
    (state / KEY_FILE).symlink_to(victim)
    with pytest.raises(TargetError, match="remove it"):
        record_key()
    assert victim.read_bytes() == b"x" * KEY_SIZE


def test_a_key_others_can_read_is_refused_with_the_fix(state: Path) -> None:
    record_key()
    (state / KEY_FILE).chmod(0o644)
    with pytest.raises(TargetError, match=f"chmod 600 {state / KEY_FILE}"):
        record_key()


def test_a_key_of_another_size_is_refused(state: Path) -> None:
    state.mkdir(mode=0o700)
    path = state / KEY_FILE
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(TargetError, match="holds 5 bytes"):
        record_key()
