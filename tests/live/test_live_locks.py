"""The per-process loader lock: in hpkg's private run directory, never in world-writable /run/lock, and
removed after every apply and revert.

Another local user is played by a forked child that drops to `nobody` (the tests run as root).
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from live_helpers import hpkg

from hpkg.errors import TargetError
from hpkg.loader.live import lock_path, target_lock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import Conversation  # noqa: E402

NOBODY = 65534
WORLD_WRITABLE_LOCK_DIR = Path("/run/lock")  # where hpkg kept its locks before


@contextmanager
def held_by_another_user(action: Callable[[], None]) -> Iterator[None]:
    """Run `action` in a child that became `nobody`, and keep the child (and what it holds) alive
    until the block ends."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            os.write(ready_w, b"1")
            os.read(done_r, 1)  # hold until the parent is done
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        assert os.read(ready_r, 1) == b"1", "the other user's child failed"
        yield
    finally:
        os.close(done_w)
        os.waitpid(child, 0)
        os.close(ready_r)


def test_a_lock_planted_in_run_lock_by_another_user_does_not_block_apply(
    samples, keys, build_package, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("HPKG_RUN_DIR", str(tmp_path / "run"))
    sample = samples["01-bounds-check"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    with Conversation(sample, "baseline", "ready") as talk:
        planted = WORLD_WRITABLE_LOCK_DIR / f"hpkg-{talk.pid}.lock"
        planted.unlink(missing_ok=True)

        def plant() -> None:
            fd = os.open(planted, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)  # the old lock name, held for as long as the child lives

        try:
            with held_by_another_user(plant):
                assert planted.stat().st_uid == NOBODY
                run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public, "--timeout", "0.3")
                assert run.returncode == 0, run.stderr
                assert hpkg("revert", "--pid", talk.pid, "--timeout", "0.3").returncode == 0
        finally:
            planted.unlink(missing_ok=True)


def test_lock_files_are_gone_after_apply_and_revert(samples, keys, build_package, tmp_path: Path,
                                                    monkeypatch) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setenv("HPKG_RUN_DIR", str(run_dir))
    sample = samples["01-bounds-check"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    with Conversation(sample, "baseline", "ready") as talk:
        run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public)
        assert run.returncode == 0, run.stderr
        assert lock_path(talk.pid).parent == run_dir
        assert list(run_dir.iterdir()) == []
        assert hpkg("revert", "--pid", talk.pid).returncode == 0
        assert list(run_dir.iterdir()) == []
        # A refused apply (the lock held by another loader) leaves no lock of its own behind either.
        with open(lock_path(talk.pid), "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public, "--timeout", "0.2")
            assert run.returncode == 4 and "another hpkg is working on process" in run.stderr
        os.unlink(lock_path(talk.pid))
        assert list(run_dir.iterdir()) == []


def test_the_lock_is_not_opened_through_a_symlink(tmp_path: Path, monkeypatch) -> None:
    """Even inside the private directory, a symlink at the lock's name is refused, not followed."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("HPKG_RUN_DIR", str(run_dir))
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    path = lock_path(424242)
    path.symlink_to(victim)
    with pytest.raises(TargetError, match="cannot open the lock"), target_lock(424242, wait=0.2):
        pass
    assert victim.read_text() == "keep me\n" and path.is_symlink()


def test_removing_the_lock_file_keeps_mutual_exclusion(tmp_path: Path, monkeypatch) -> None:
    """Workers take the lock in turns, each removing the file as it leaves: a worker that opened the
    file just before it was removed must not count as holding the lock. Every increment of a counter
    kept under the lock survives (no two workers inside at once)."""
    monkeypatch.setenv("HPKG_RUN_DIR", str(tmp_path / "run"))
    counter = tmp_path / "counter"
    counter.write_text("0")
    workers, rounds = 4, 300
    children = []
    for _ in range(workers):
        child = os.fork()
        if child == 0:
            status = 1
            try:
                for _ in range(rounds):
                    with target_lock(424242, wait=120.0):
                        value = int(counter.read_text())
                        counter.write_text(str(value + 1))
                status = 0
            finally:
                os._exit(status)
        children.append(child)
    for child in children:
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert int(counter.read_text()) == workers * rounds
    assert not lock_path(424242).exists()
