"""Debian packages as input: recognise a .deb, unpack it safely into a private directory, pair its ELFs.

A .deb's file tree comes from `dpkg-deb --fsys-tarfile` (dpkg parses the ar archive and its compressed
data member); hpkg reads that tar stream itself, so that nothing lands outside the private directory:
a member whose name is absolute or climbs with `..`, a symlink whose target climbs out of the tree or a
hard link to outside it makes the whole package refused (exit 3). Symlinks are checked but not
created (pairing is by the path of regular files), devices and FIFOs are skipped, set-id bits dropped.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpkg.errors import DebianPackageError

# `ar` magic, then the first member's name: every .deb starts with these bytes (deb(5)).
_DEB_MAGIC = b"!<arch>\ndebian-binary"
_ELF_MAGIC = b"\x7fELF"
# Debug files inside a package (a -dbgsym one, or a package that ships them) are symbols, not images.
_DEBUG_TREE = "usr/lib/debug/"
# A member larger than any binary hpkg reads is refused rather than written (a decompression bomb).
MAX_MEMBER_SIZE = 4 << 30


def is_deb(path: str) -> bool:
    """Whether `path` is a Debian binary package (by its first bytes; unreadable means "no")."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_DEB_MAGIC)) == _DEB_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class UnpackedDeb:
    """A .deb unpacked into `root`: its control fields and the ELF files it holds, by relative path."""

    deb: str
    package: str
    version: str
    architecture: str
    root: Path
    elf_files: tuple[str, ...]  # relative paths of regular files that start with the ELF magic

    def identity(self) -> dict[str, str]:
        """The package's identity for documents: path, name, version, architecture."""
        return {"path": self.deb, "package": self.package, "version": self.version,
                "architecture": self.architecture}

    def path_of(self, relative: str) -> str:
        return str(self.root / relative)


def _control_fields(deb: str) -> dict[str, str]:
    fields = ("Package", "Version", "Architecture")
    done = subprocess.run(["dpkg-deb", "--field", deb, *fields], capture_output=True, text=True)
    if done.returncode != 0:
        raise DebianPackageError(f"{deb}: not a readable Debian package: {_first_line(done.stderr)}")
    values = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition(":")
        values[name.strip()] = value.strip()
    return {name: values.get(name, "") for name in fields}


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("dpkg-deb: error: ") if lines else "dpkg-deb failed"


def _member_path(deb: str, name: str) -> str:
    """The member's path relative to the package root; a name that would leave it is refused."""
    relative = posixpath.normpath(name.removeprefix("./")) if name not in (".", "./") else "."
    if name.startswith("/") or relative == ".." or relative.startswith("../"):
        raise DebianPackageError(f"{deb}: member {name!r} lies outside the package (path traversal)")
    return relative


def _check_link(deb: str, member: tarfile.TarInfo, relative: str) -> None:
    """A symlink may point anywhere inside the tree (an absolute target is taken from the package root);
    one that climbs above it is refused. A hard link must name a member inside it."""
    target = member.linkname
    if member.issym():
        joined = target if target.startswith("/") else posixpath.join(posixpath.dirname(relative), target)
        resolved = posixpath.normpath(joined.lstrip("/"))
        if resolved == ".." or resolved.startswith("../"):
            raise DebianPackageError(f"{deb}: symlink {relative} -> {target} points outside the package")
    else:
        _member_path(deb, target)


def _extract(deb: str, stream, root: Path) -> list[str]:
    """Write the tar stream's regular files under `root`; return the ELF files' relative paths."""
    elf_files = []
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                relative = _member_path(deb, member.name)
                if relative == ".":
                    continue
                destination = root / relative
                if member.issym() or member.islnk():
                    _check_link(deb, member, relative)
                    if member.islnk():  # a second name of a file already written: copy it
                        source = root / _member_path(deb, member.linkname)
                        if source.is_file() and not source.is_symlink():
                            destination.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copyfile(source, destination)
                            if not relative.startswith(_DEBUG_TREE) and _starts_with_elf(destination):
                                elf_files.append(relative)
                    continue
                if member.isdir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    continue  # devices and FIFOs: nothing hpkg diffs
                if member.size > MAX_MEMBER_SIZE:
                    raise DebianPackageError(f"{deb}: member {relative} is {member.size} bytes, larger than"
                                             f" any binary hpkg reads")
                destination.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular member always has contents
                # O_EXCL|O_NOFOLLOW: a name written twice, or through a planted link, is refused.
                fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(destination, stat.S_IMODE(member.mode) & 0o755 | 0o600)
                if not relative.startswith(_DEBUG_TREE) and _starts_with_elf(destination):
                    elf_files.append(relative)
    except (tarfile.TarError, EOFError) as exc:
        raise DebianPackageError(f"{deb}: unreadable data archive: {exc}") from None
    except FileExistsError as exc:
        raise DebianPackageError(f"{deb}: member {exc.filename} is written twice") from None
    except OSError as exc:
        raise DebianPackageError(f"{deb}: cannot unpack: {exc.strerror or exc}") from None
    return sorted(set(elf_files))


def _starts_with_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_ELF_MAGIC)) == _ELF_MAGIC


def unpack_deb(deb: str, root: Path) -> UnpackedDeb:
    """Unpack `deb` into the empty directory `root` (see the module docstring for what is refused)."""
    if not is_deb(deb):
        raise DebianPackageError(f"{deb}: not a Debian package (.deb)")
    fields = _control_fields(deb)
    process = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        elf_files = _extract(deb, process.stdout, root)
    finally:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        error = process.stderr.read().decode(errors="replace")
        process.stderr.close()
        status = process.wait()
    if status != 0:
        raise DebianPackageError(f"{deb}: dpkg-deb cannot read its data: {_first_line(error)}")
    return UnpackedDeb(deb, fields["Package"], fields["Version"], fields["Architecture"], root,
                       tuple(elf_files))


@contextlib.contextmanager
def unpacked(*debs: str | None) -> Iterator[list[UnpackedDeb | None]]:
    """Each .deb (None stays None) unpacked into its own directory of one private (0700) temporary
    directory, removed when the block ends, whatever happens in it."""
    top = Path(tempfile.mkdtemp(prefix="hpkg-deb-"))
    try:
        result: list[UnpackedDeb | None] = []
        for index, deb in enumerate(debs):
            if deb is None:
                result.append(None)
                continue
            root = top / str(index)
            root.mkdir()
            result.append(unpack_deb(deb, root))
        yield result
    finally:
        shutil.rmtree(top, ignore_errors=True)


def debug_root(dbgsym: UnpackedDeb | None) -> tuple[str, ...]:
    """The debug-file root a -dbgsym package provides (build-id tree), as load_image's debug_roots."""
    return (str(dbgsym.root / _DEBUG_TREE),) if dbgsym is not None else ()
