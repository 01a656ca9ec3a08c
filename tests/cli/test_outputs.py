"""Every output (`build`'s package, `keygen`'s keys, `apply --file`'s patched copy) is written whole or not
at all and never through a symlink: a previous output survives any failure byte for byte, and a link
planted at the destination or at a temporary name, by another user, is never followed.

Real files, real symlinks, real sample binaries; another local user is played by a child process that
drops to `nobody`, a failing disk by RLIMIT_FSIZE (the write fails with EFBIG part-way through).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpkg import atomic_output
from hpkg.atomic_output import write_output
from hpkg.errors import TargetError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import SAMPLES_DIR, build_corpus  # noqa: E402

SAMPLE = SAMPLES_DIR / "01-bounds-check" / "out"
NOBODY = 65534
EXIT_USAGE, EXIT_TARGET = 2, 6
DEADLINE = 120.0  # a safety net against a hang, not a timing assertion


def hpkg(*args: object, file_size_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line; with `file_size_limit`, no file it writes may grow past that many bytes."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "hpkg", *map(str, args)], capture_output=True, text=True, timeout=DEADLINE,
        preexec_fn=limit if file_size_limit is not None else None,
    )  # fmt: skip


def as_nobody(action: Callable[[], None]) -> None:
    """Run `action` in a child process that became the unprivileged user `nobody`."""
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the other user's action failed"


@pytest.fixture(scope="module")
def pair() -> tuple[Path, Path]:
    build_corpus()
    return SAMPLE / "baseline", SAMPLE / "fixed"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user can write, with the sticky bit, as /tmp: the place such attacks happen."""
    top = Path(tempfile.mkdtemp(prefix="hpkg-outputs-"))
    top.chmod(0o755)
    directory = top / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    yield directory
    shutil.rmtree(top)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-only file an attacker would like root to overwrite or chmod."""
    path = tmp_path / "victim"
    path.write_text("precious\n")
    path.chmod(0o644)
    return path


def _untouched(victim: Path) -> None:
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def _no_temporary_files(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


# --- symlinks ---------------------------------------------------------------------------------


def test_build_refuses_a_symlink_another_user_planted_at_the_output(pair, shared: Path, victim: Path) -> None:
    output = shared / "fix.hpkg"
    as_nobody(lambda: output.symlink_to(victim))
    run = hpkg("build", *pair, "-o", output)
    assert run.returncode == EXIT_USAGE and "is a symbolic link" in run.stderr, run.stderr
    _untouched(victim)
    assert output.is_symlink()


def test_build_ignores_a_symlink_planted_at_the_old_fixed_temporary_name(pair, shared: Path,
                                                                          victim: Path) -> None:
    """Before, `hpkg build -o DIR/NAME` wrote through DIR/.NAME.tmp: a link there made root overwrite
    any file."""
    output = shared / "fix.hpkg"
    old_temporary = shared / ".fix.hpkg.tmp"
    as_nobody(lambda: old_temporary.symlink_to(victim))
    run = hpkg("build", *pair, "-o", output)
    assert run.returncode == 0, run.stderr
    _untouched(victim)
    assert old_temporary.is_symlink() and output.is_file() and not output.is_symlink()
    assert hpkg("verify", output).returncode == 0


def test_a_symlink_at_the_random_temporary_name_is_skipped_not_followed(tmp_path: Path, victim: Path,
                                                                         monkeypatch) -> None:
    """The temporary name is random; one that is taken (here by a link, planted where the first random
    name will fall) makes O_CREAT|O_EXCL|O_NOFOLLOW fail, and another name is drawn."""
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(atomic_output.secrets, "token_hex", lambda _: next(names))
    (tmp_path / ".out.aaaaaaaaaaaa.tmp").symlink_to(victim)
    write_output(tmp_path / "out", b"new output\n")
    assert (tmp_path / "out").read_bytes() == b"new output\n"
    _untouched(victim)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.aaaaaaaaaaaa.tmp", "out", "victim"]


def test_a_symlink_at_the_destination_is_refused_by_the_writer_too(tmp_path: Path, victim: Path) -> None:
    """The command line refuses a link before any work; the writer refuses one planted since then."""
    link = tmp_path / "out"
    link.symlink_to(victim)
    with pytest.raises(TargetError, match="is a symbolic link"):
        write_output(link, b"new output\n")
    _untouched(victim)
    assert link.is_symlink()
    _no_temporary_files(tmp_path)


def test_keygen_never_follows_or_chmods_a_planted_symlink(shared: Path, victim: Path) -> None:
    """Before, `keygen --force` truncated the link's target, wrote a private key into it and chmodded
    it 0600."""
    key = shared / "release"
    for planted in (key, Path(f"{key}.pub")):
        as_nobody(lambda planted=planted: planted.symlink_to(victim))
        run = hpkg("keygen", "--force", key)
        assert run.returncode == EXIT_USAGE and "symbolic link" in run.stderr, run.stderr
        _untouched(victim)
        planted.unlink()
        assert list(shared.iterdir()) == []


def test_apply_file_refuses_a_symlink_at_the_output(pair, tmp_path: Path, victim: Path) -> None:
    package = tmp_path / "fix.hpkg"
    assert hpkg("build", *pair, "-o", package).returncode == 0
    output = tmp_path / "patched"
    output.symlink_to(victim)
    run = hpkg("apply", package, "--allow-unsigned", "--file", pair[0], "-o", output)
    assert run.returncode == EXIT_USAGE and "is a symbolic link" in run.stderr, run.stderr
    _untouched(victim)


# --- failures keep the previous output -----------------------------------------------------------


def test_a_failed_build_keeps_the_previous_package(pair, tmp_path: Path) -> None:
    package = tmp_path / "fix.hpkg"
    assert hpkg("build", *pair, "-o", package).returncode == 0
    before = package.read_bytes()
    run = hpkg("build", *pair, "-o", package, "--level", "2", file_size_limit=len(before) // 2)
    assert run.returncode == EXIT_TARGET and "cannot write" in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1
    assert package.read_bytes() == before
    _no_temporary_files(tmp_path)


def test_a_failed_apply_file_keeps_the_previous_output_byte_identical(pair, tmp_path: Path) -> None:
    package = tmp_path / "fix.hpkg"
    assert hpkg("build", *pair, "-o", package).returncode == 0
    output = tmp_path / "patched"
    assert hpkg("apply", package, "--allow-unsigned", "--file", pair[0], "-o", output).returncode == 0
    before = output.read_bytes()
    mode = output.stat().st_mode
    # The disk fills up part-way through the new copy (the package and the sample are read, not written).
    run = hpkg("apply", package, "--allow-unsigned", "--file", pair[0], "-o", output,
               file_size_limit=len(before) // 2)
    assert run.returncode == EXIT_TARGET and "cannot write" in run.stderr, run.stderr
    assert output.read_bytes() == before and output.stat().st_mode == mode
    _no_temporary_files(tmp_path)
    # A refusal (another build) leaves it as it was too.
    run = hpkg("apply", package, "--allow-unsigned", "--file", pair[1], "-o", output)
    assert run.returncode == 4, run.stderr
    assert output.read_bytes() == before


def test_a_failed_keygen_keeps_the_previous_key_pair(tmp_path: Path) -> None:
    key = tmp_path / "release"
    assert hpkg("keygen", key).returncode == 0
    private, public = key.read_bytes(), Path(f"{key}.pub").read_bytes()
    # The public key (113 bytes) would fit, the private one (119) not: neither file is replaced.
    run = hpkg("keygen", "--force", key, file_size_limit=116)
    assert run.returncode == EXIT_USAGE and "cannot write" in run.stderr, run.stderr
    assert key.read_bytes() == private and Path(f"{key}.pub").read_bytes() == public
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _no_temporary_files(tmp_path)


def test_files_written_together_are_all_replaced_or_none(tmp_path: Path, victim: Path) -> None:
    """A key pair: the second file failing (here: a link planted at its name) keeps the first as it was."""
    first, second = tmp_path / "release", tmp_path / "release.pub"
    first.write_bytes(b"old private\n")
    second.symlink_to(victim)
    with pytest.raises(TargetError, match="is a symbolic link"):
        atomic_output.write_outputs([(first, b"new private\n", 0o600), (second, b"new public\n", 0o644)])
    assert first.read_bytes() == b"old private\n"
    _untouched(victim)
    _no_temporary_files(tmp_path)
