"""The loader's own directories on the host: private to the user hpkg runs as, never world-writable.

hpkg runs as root and other local users are not trusted, so every file the loader keeps on the host
(per-process locks, the key that authenticates in-target records, the package store) lives in a
directory that only the invoking user can write: a lock or key that another user could pre-create,
replace or point elsewhere with a symlink would let them block or steer the loader.

- `run_dir()`: volatile state (locks): `/run/hpkg` for root, `$XDG_RUNTIME_DIR/hpkg` otherwise.
- `state_dir()`: state that survives a reboot (keys): `/var/lib/hpkg` for root,
  `$XDG_STATE_HOME/hpkg` (default `~/.local/state/hpkg`) otherwise.
- `store_dir()`: the package store of `hpkg install` and `hpkg agent` (packages and the public keys
  they must be signed by): `--store DIR`, else `$HPKG_STORE`, else the state directory.

`HPKG_RUN_DIR`, `HPKG_STATE_DIR` and `HPKG_STORE` override them (tests, containers); the same checks
apply.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hpkg.errors import TargetError

_MODE = 0o700


def run_dir() -> Path:
    """The private directory for locks and other state that ends with the boot, created if missing."""
    override = os.environ.get("HPKG_RUN_DIR")
    if override:
        return private_dir(Path(override))
    if os.geteuid() == 0:
        return private_dir(Path("/run/hpkg"))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return private_dir(Path(runtime) / "hpkg")
    return private_dir(_user_state_root() / "run")


def state_dir() -> Path:
    """The private directory for state kept across reboots (keys), created if missing."""
    override = os.environ.get("HPKG_STATE_DIR")
    if override:
        return private_dir(Path(override))
    if os.geteuid() == 0:
        return private_dir(Path("/var/lib/hpkg"))
    return private_dir(_user_state_root())


def store_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The private directory of the package store, created if missing: `override` (`--store DIR`), else
    `$HPKG_STORE`, else `state_dir()` (so `/var/lib/hpkg` for root, and a test's `HPKG_STATE_DIR`)."""
    chosen = override if override not in (None, "") else os.environ.get("HPKG_STORE")
    if chosen:
        return private_dir(Path(chosen))
    return state_dir()


def _user_state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "hpkg"


def private_dir(path: Path) -> Path:
    """`path` as a directory owned by us with mode 0700, created if missing; refused if anything else.

    The checks use lstat, so a symlink planted at the path is refused rather than followed; a
    directory another user owns or can write is refused rather than repaired, since its contents may
    already be theirs.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, _MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise TargetError(f"cannot create hpkg's directory {path}: {exc.strerror}") from None
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise TargetError(f"cannot use hpkg's directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise TargetError(f"hpkg's directory {path} is not a directory (a symlink or file is there)")
    if info.st_uid != os.geteuid():
        raise TargetError(f"hpkg's directory {path} belongs to uid {info.st_uid}, not to us: remove it")
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise TargetError(f"hpkg's directory {path} has mode {mode:o}; run: chmod 700 {path}")
    return path
