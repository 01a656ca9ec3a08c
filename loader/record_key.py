"""The key that authenticates in-target records, kept where the target cannot read it.

The record of what hpkg changed lives in the target's own memory (loader/record.py), so the target can
rewrite it; an unkeyed digest it can recompute. Records are therefore sealed with HMAC-SHA256 under a
32-byte key that only the loader's user can read: `record.key` in `hostdirs.state_dir()` (0700,
owner-checked; /var/lib/hpkg for root). A target running as another user than hpkg cannot read it, so
it cannot forge a record; a target running as hpkg's own user could read it, but such a target could
equally ptrace hpkg or rewrite its files: there is no boundary to defend then.

The key is made once, on first use. Two hpkg starting at once must end with one key: each writes 32
random bytes to its own temporary file (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, a random name), fsyncs
it, then links it to `record.key`; link(2) never replaces an existing name, so the first one wins and
the other reads the winner's key. A key file that is not a regular file of ours, is readable by
others, or is not 32 bytes is refused (exit 6) with how to fix it, never repaired or followed.
Losing the key makes every record written under it unauthenticated: `revert` then refuses them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from hpkg.errors import TargetError
from hpkg.loader.hostdirs import state_dir

KEY_FILE = "record.key"
KEY_SIZE = 32  # HMAC-SHA256 keys of the hash's output size


def record_key() -> bytes:
    """This host's record key, made on first use."""
    directory = state_dir()
    path = directory / KEY_FILE
    key = _read_key(path)
    if key is None:
        _create_key(directory, path)
        key = _read_key(path)
        if key is None:
            raise TargetError(f"the record key {path} vanished while hpkg created it")
    return key


def _read_key(path: Path) -> bytes | None:
    """The key at `path`, None when there is none; refused when it is not a private 32-byte file of ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink planted at the key's name
        raise TargetError(f"cannot open the record key {path}: {exc.strerror}; remove it") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TargetError(f"the record key {path} is not a regular file; remove it")
        if info.st_uid != os.geteuid():
            raise TargetError(f"the record key {path} belongs to uid {info.st_uid}, not to us; remove it")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise TargetError(f"the record key {path} has mode {mode:o}; run: chmod 600 {path}")
        key = os.read(fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_SIZE:
        raise TargetError(f"the record key {path} holds {len(key)} bytes, not {KEY_SIZE}; remove it")
    return key


def _create_key(directory: Path, path: Path) -> None:
    """Write a new key under a random name, then link it into place unless another hpkg did first."""
    temporary = directory / f".{KEY_FILE}.{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o600)
    except OSError as exc:
        raise TargetError(f"cannot create the record key in {directory}: {exc.strerror}") from None
    try:
        try:
            os.write(fd, secrets.token_bytes(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another hpkg made it first: theirs is the key
            os.link(temporary, path, follow_symlinks=False)
    except OSError as exc:
        raise TargetError(f"cannot create the record key {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
