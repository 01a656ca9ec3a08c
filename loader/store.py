"""The package store: the packages a machine should carry, and the public keys they must be signed by.

`hpkg install` verifies a package and copies it here; `hpkg agent` serves every package here to every
matching process; `hpkg uninstall` removes one. The layout, inside a private 0700 directory
(loader/hostdirs.store_dir: `/var/lib/hpkg` for root):

    packages/<package_id>.hpkg   the package file, byte for byte as verified
    packages/<package_id>.json   how it was trusted at install: signature "ed25519" (and the key id) or
                                 "waived" (installed with --allow-unsigned, which is thereby recorded)
    keys/<key_id>.pub            the trusted Ed25519 public keys (PEM), named by their key id
    lock                         flock: install and uninstall hold it exclusively, each agent apply
                                 shares it (an uninstall never races an apply of the same package)

hpkg runs as root and trusts nothing a package says about where to write: every file name comes from
the package id once it is proven to be a plain name (`SAFE_ID`), every write goes through
hpkg.atomic_output (a new file, never through a symlink, renamed into place), and every read opens
without following a symlink. Each stored package is checked again whenever it is read (`contents`),
under the policy it was installed with: a signed package must verify under a key of `keys/`, an
unsigned one is served only when its install record says the operator waived the signature. A
corrupt, unsigned or foreign file dropped into `packages/` is listed as refused, with why, and the
others are served.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hpkg.atomic_output import write_output
from hpkg.errors import HpkgError, PackageError, TargetError, VerifyError
from hpkg.formats.model import LoadedPackage, Package
from hpkg.formats.package import MAX_FILE_SIZE, read_package
from hpkg.formats.signing import key_id, load_public_key, public_key_from_bytes
from hpkg.loader.hostdirs import private_dir, store_dir
from hpkg.loader.live_formats import require_live_format

# A package id names files of the store: a plain name, never a path, a dot-file or an option.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
PACKAGE_SUFFIX = ".hpkg"
RECORD_SUFFIX = ".json"
KEY_SUFFIX = ".pub"
MAX_RECORD_SIZE = 4096  # an install record is a few hundred bytes
MAX_KEY_SIZE = 4096
_FILE_MODE = 0o600


class Signature(Enum):
    """How a stored package is trusted: by its signature under a stored key, or by the operator's waiver."""

    ED25519 = "ed25519"
    WAIVED = "waived"


def check_package_id(package_id: str) -> str:
    """`package_id` when it can name a file of the store; PackageError (exit 3) otherwise."""
    if not SAFE_ID.fullmatch(package_id) or package_id.endswith(PACKAGE_SUFFIX):
        raise PackageError(
            f"package id {package_id!r} cannot name a file in the store (letters, digits, '.', '_', '-';"
            " at most 128)"
        )
    return package_id


@dataclass(frozen=True)
class StoredPackage:
    """A package of the store that passed its checks: what the agent serves."""

    package: Package
    path: Path
    signature: Signature
    key_id: str  # hex; "" when the signature was waived
    sha256: str  # of the file, to tell a reinstalled package from the one already loaded

    @property
    def package_id(self) -> str:
        return self.package.identity.package_id

    @property
    def build_id(self) -> str:
        """The baseline's build-id (lowercase hex), as /proc scans report it."""
        return self.package.target.build_id.hex()

    @property
    def patch_level(self) -> int:
        return self.package.identity.patch_level

    def to_json(self) -> dict[str, object]:
        return {
            "package_id": self.package_id,
            "patch_level": self.patch_level,
            "baseline_build_id": self.build_id,
            "signature": self.signature.value,
            "key_id": self.key_id or None,
            "sha256": self.sha256,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class RefusedFile:
    """A file of `packages/` that is not served, and why (one line)."""

    path: Path
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "reason": self.reason}


@dataclass(frozen=True)
class StoreContents:
    """One reading of the store: the packages served and the files refused."""

    packages: tuple[StoredPackage, ...]
    refused: tuple[RefusedFile, ...]

    def by_build_id(self) -> dict[str, tuple[StoredPackage, ...]]:
        """The packages of each baseline, highest level first (a higher level contains the lower ones)."""
        groups: dict[str, list[StoredPackage]] = {}
        for stored in self.packages:
            groups.setdefault(stored.build_id, []).append(stored)
        return {b: tuple(sorted(g, key=lambda s: -s.patch_level)) for b, g in groups.items()}


@dataclass(frozen=True)
class InstallResult:
    """What `hpkg install` did: the stored package, and whether anything in the store changed."""

    stored: StoredPackage
    changed: bool
    key_added: bool

    def to_json(self) -> dict[str, object]:
        return {**self.stored.to_json(), "changed": self.changed, "key_added": self.key_added}


def _read_own_file(path: Path, limit: int, what: str, error: type[HpkgError]) -> bytes:
    """The bytes of a regular file of ours (not a symlink, not writable by others), at most `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{what} {path} is a symbolic link; the store holds files only") from None
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    with open(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if info.st_uid not in (os.geteuid(), 0) or info.st_mode & 0o022:
            raise error(f"{what} {path} can be changed by another user (owner {info.st_uid}, "
                        f"mode {stat.S_IMODE(info.st_mode):04o})")
        blob = f.read(limit + 1)
    if len(blob) > limit:
        raise error(f"{what} {path} is larger than any valid one ({limit} bytes)")
    return blob


def _pem(public_key: Ed25519PublicKey) -> bytes:
    pem, spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    return public_key.public_bytes(pem, spki)


class Store:
    """The store directory and its two subdirectories, each private (0700), created when missing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.packages_dir = private_dir(root / "packages")
        self.keys_dir = private_dir(root / "keys")

    @classmethod
    def open(cls, override: str | os.PathLike[str] | None = None) -> Store:
        """The store named by `--store DIR`, else `$HPKG_STORE`, else hpkg's state directory."""
        return cls(store_dir(override))

    # -- locking ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Hold the store's lock: exclusively to change the store, shared around one agent apply."""
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.root / "lock", flags, _FILE_MODE)
        except OSError as exc:
            raise TargetError(f"cannot open the store's lock {self.root / 'lock'}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    # -- paths ----------------------------------------------------------------------------------------

    def package_path(self, package_id: str) -> Path:
        return self.packages_dir / f"{check_package_id(package_id)}{PACKAGE_SUFFIX}"

    def record_path(self, package_id: str) -> Path:
        return self.packages_dir / f"{check_package_id(package_id)}{RECORD_SUFFIX}"

    def key_path(self, key: bytes) -> Path:
        return self.keys_dir / f"{key.hex()}{KEY_SUFFIX}"

    def is_installed(self, stored: StoredPackage) -> bool:
        """Whether `stored` is still the installed file of its id (cheap: one stat and, rarely, a hash)."""
        try:
            info = os.stat(stored.path, follow_symlinks=False)
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        try:
            blob = _read_own_file(stored.path, MAX_FILE_SIZE, "package", PackageError)
        except HpkgError:
            return False
        return hashlib.sha256(blob).hexdigest() == stored.sha256

    # -- install / uninstall ------------------------------------------------------------------------

    def install(self, source: str | os.PathLike[str], key_file: str | os.PathLike[str] | None,
                allow_unsigned: bool) -> InstallResult:
        """Verify the package at `source` and copy it into the store; nothing changes when it is there.

        With `key_file` the package must be signed by that key, which becomes trusted by the store; with
        neither `key_file` nor `allow_unsigned`, by a key the store already trusts; `allow_unsigned`
        takes it unchecked and records the waiver. VerifyError/PackageError (exit 3) otherwise.
        """
        from hpkg.formats.package import read_package_file

        blob = read_package_file(source)
        given = load_public_key(key_file) if key_file is not None else None
        loaded = self._trusted(blob, os.fspath(source), given, allow_unsigned)
        require_live_format(loaded.package, "install (the agent applies stored packages to processes)")
        package_id = check_package_id(loaded.package.identity.package_id)
        signature = Signature.WAIVED if allow_unsigned else Signature.ED25519
        signer = loaded.key_id.hex() if signature is Signature.ED25519 and loaded.key_id else ""
        record = _install_record(loaded.package, signature, signer, blob)
        with self.locked(exclusive=True):
            key_added = given is not None and self._write_if_changed(self.key_path(key_id(given)),
                                                                     _pem(given))
            # The record first: an agent that sees the new package file finds how it was trusted.
            wrote_record = self._write_if_changed(self.record_path(package_id), record)
            wrote_package = self._write_if_changed(self.package_path(package_id), blob)
        stored = StoredPackage(loaded.package, self.package_path(package_id), signature, signer,
                               hashlib.sha256(blob).hexdigest())
        return InstallResult(stored, key_added or wrote_record or wrote_package, key_added)

    def remove(self, package_id: str) -> bool:
        """Delete a package and its install record from the store; whether there was anything to delete."""
        removed = False
        with self.locked(exclusive=True):
            for path in (self.package_path(package_id), self.record_path(package_id)):
                try:
                    os.unlink(path)
                    removed = True
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise TargetError(f"cannot remove {path}: {exc.strerror}") from None
        return removed

    def _write_if_changed(self, path: Path, data: bytes) -> bool:
        try:
            if _read_own_file(path, len(data) + 1, "file", TargetError) == data:
                return False
        except TargetError:
            pass  # missing, or not ours to keep: written anew (atomic_output refuses a symlink there)
        write_output(path, data, _FILE_MODE)
        return True

    # -- reading --------------------------------------------------------------------------------------

    def trusted_key(self, key: bytes) -> Ed25519PublicKey | None:
        """The stored public key with this key id, or None when the store does not trust it."""
        path = self.key_path(key)
        try:
            blob = _read_own_file(path, MAX_KEY_SIZE, "public key", VerifyError)
        except VerifyError:
            if not os.path.lexists(path):
                return None
            raise
        public_key = public_key_from_bytes(blob, str(path))
        if key_id(public_key) != key:
            raise VerifyError(f"public key {path} is not the key its name says ({key_id(public_key).hex()})")
        return public_key

    def _trusted(self, blob: bytes, name: str, given: Ed25519PublicKey | None,
                 allow_unsigned: bool) -> LoadedPackage:
        """The package in `blob` under install's signature policy (see `install`)."""
        if given is not None:
            return read_package(blob, given)
        loaded = read_package(blob)  # digests (and the unsigned package digest) hold
        if allow_unsigned:
            return loaded
        if not loaded.signed or loaded.key_id is None:
            raise VerifyError(f"package {name} is unsigned: pass --key PUB of its signer, or --allow-unsigned"
                              " to install it unchecked (recorded in the store)")
        stored_key = self.trusted_key(loaded.key_id)
        if stored_key is None:
            raise VerifyError(f"package {name} is signed by key id {loaded.key_id.hex()}, which the store"
                              " does not trust yet: pass --key PUB")
        return read_package(blob, stored_key)

    def contents(self) -> StoreContents:
        """Every package file of the store, checked again now: the ones served and the ones refused."""
        served: list[StoredPackage] = []
        refused: list[RefusedFile] = []
        try:
            names = sorted(os.listdir(self.packages_dir))
        except OSError as exc:
            raise TargetError(f"cannot list the store {self.packages_dir}: {exc.strerror}") from None
        for name in names:
            if name.startswith("."):
                continue  # a write in progress (hpkg.atomic_output's temporary names)
            path = self.packages_dir / name
            if name.endswith(RECORD_SUFFIX) and os.path.lexists(path.with_suffix(PACKAGE_SUFFIX)):
                continue  # read with its package
            try:
                served.append(self._load(name, path))
            except HpkgError as exc:
                refused.append(RefusedFile(path, str(exc)))
        return StoreContents(tuple(served), tuple(refused))

    def _load(self, name: str, path: Path) -> StoredPackage:
        """One stored package, checked as `install` checked it; HpkgError says why it is refused."""
        if not name.endswith(PACKAGE_SUFFIX):
            raise PackageError(f"not a package of the store (files are named <package id>{PACKAGE_SUFFIX})")
        stem = name[: -len(PACKAGE_SUFFIX)]
        check_package_id(stem)
        blob = _read_own_file(path, MAX_FILE_SIZE, "package", PackageError)
        record = self._record(stem, blob)
        if record is not None and record.get("signature") == Signature.WAIVED.value:
            loaded, signature, signer = read_package(blob), Signature.WAIVED, ""
        else:
            loaded = read_package(blob)
            if not loaded.signed or loaded.key_id is None:
                raise VerifyError("unsigned, and not installed with --allow-unsigned")
            key = self.trusted_key(loaded.key_id)
            if key is None:
                raise VerifyError(f"signed by key id {loaded.key_id.hex()}, which the store does not trust")
            loaded, signature, signer = read_package(blob, key), Signature.ED25519, loaded.key_id.hex()
        package_id = loaded.package.identity.package_id
        if package_id != stem:
            raise PackageError(f"holds package {package_id!r}, not the {stem!r} its name says")
        return StoredPackage(loaded.package, path, signature, signer, hashlib.sha256(blob).hexdigest())

    def _record(self, package_id: str, package: bytes) -> dict[str, object] | None:
        """The install record of a package, bound to its bytes; None when there is none."""
        path = self.record_path(package_id)
        if not os.path.lexists(path):
            return None
        blob = _read_own_file(path, MAX_RECORD_SIZE, "install record", PackageError)
        try:
            record = json.loads(blob)
        except ValueError:
            raise PackageError(f"install record {path} is not JSON") from None
        if not isinstance(record, dict) or record.get("package_id") != package_id:
            raise PackageError(f"install record {path} is not the record of package {package_id}")
        if record.get("sha256") != hashlib.sha256(package).hexdigest():
            raise PackageError(f"install record {path} was written for other package bytes")
        return record


def _install_record(package: Package, signature: Signature, signer: str, blob: bytes) -> bytes:
    """The install record's bytes: the same package installed the same way gives the same bytes."""
    record = {
        "package_id": package.identity.package_id,
        "patch_level": package.identity.patch_level,
        "baseline_build_id": package.target.build_id.hex(),
        "signature": signature.value,
        "key_id": signer or None,
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
