"""Writing an output file whole or not at all, never through a symlink: packages, keys, patched files.

hpkg runs as root in directories other users may write (`/tmp`, a shared build tree), so an output
is never opened by its name. Each one is written to a fresh temporary file beside it, created with
O_CREAT|O_EXCL|O_NOFOLLOW under a random name (a file or symlink planted there makes the create
fail, and another name is tried), read back and checked, fsynced, and only then renamed over the
destination; the directory is fsynced so that the rename survives a crash. Until that rename the
previous output is untouched, whatever fails.

A destination that is a symbolic link is refused: following it would let whoever made the link
choose the file root replaces, and replacing the link itself would silently drop what the user
pointed it at. rename(2) never follows a link at the destination, so one planted between the check
and the rename is replaced, not followed. Every name is resolved against one open descriptor of the
destination directory, so a directory swapped while the output is written does not redirect it.

Shared by the command line (`hpkg build`, `hpkg keygen`) and the loader (`apply --file`); it imports
nothing of hpkg but the error tree (pyproject's import contracts hold it to that).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from hpkg.errors import TargetError

_ATTEMPTS = 16  # random temporary names tried before giving up (each collision is someone else's file)
_NAME_MAX = 255  # bytes in one file name (Linux NAME_MAX)
_TEMP_SUFFIX_BYTES = 20  # ".<12 hex digits>.tmp" after the destination's name

Check = Callable[[bytes], None]


def default_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0666 less the process umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class StagedOutput:
    """One output in progress: a private temporary file beside `path`, renamed over it by `commit`.

    Use as a context manager: leaving it without `commit` (an exception, a failed check) removes
    the temporary file and leaves the destination as it was.
    """

    def __init__(self, path: str | os.PathLike[str], mode: int | None = None) -> None:
        self.path = Path(path)
        self.mode = default_mode() if mode is None else mode
        self._name = self.path.name
        if self._name in ("", ".", ".."):
            raise TargetError(f"cannot write {self.path}: it names a directory, not a file")
        self._dir_fd = self._open_directory()
        self._fd: int | None = None
        self._temporary: str | None = None
        try:
            self.refuse_unsafe_destination()
            self._fd, self._temporary = self._create_temporary()
        except BaseException:
            self.discard()
            raise

    def _fail(self, exc: OSError) -> TargetError:
        return TargetError(f"cannot write {self.path}: {exc.strerror or exc}")

    def _open_directory(self) -> int:
        directory = self.path.parent
        try:
            return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._fail(exc) from None

    def refuse_unsafe_destination(self) -> None:
        """TargetError when the destination exists as anything but a regular file (a symlink above all)."""
        try:
            info = os.lstat(self._name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail(exc) from None
        if stat.S_ISLNK(info.st_mode):
            raise TargetError(
                f"{self.path} is a symbolic link; refusing to write through it or to replace it"
                " (name the file it points to, or remove the link)"
            )
        if not stat.S_ISREG(info.st_mode):
            raise TargetError(f"{self.path} exists and is not a regular file; refusing to replace it")

    def _create_temporary(self) -> tuple[int, str]:
        stem = os.fsencode(self._name)[: _NAME_MAX - _TEMP_SUFFIX_BYTES - 1]
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(_ATTEMPTS):
            name = "." + os.fsdecode(stem) + f".{secrets.token_hex(6)}.tmp"
            try:
                return os.open(name, flags, 0o600, dir_fd=self._dir_fd), name
            except FileExistsError:
                continue  # a file or a planted symlink under that name: never opened, try another
            except OSError as exc:
                raise self._fail(exc) from None
        raise TargetError(f"cannot write {self.path}: no free temporary name after {_ATTEMPTS} attempts")

    def write(self, data: bytes, check: Check | None = None) -> None:
        """Write `data`, read it back from the file, and run `check` on what was read, then fsync."""
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fchmod(self._fd, self.mode)
            written = self._read_back(len(data))
        except OSError as exc:
            raise self._fail(exc) from None
        if written != data:
            raise TargetError(f"cannot write {self.path}: the bytes read back differ from those written")
        if check is not None:
            check(written)
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise self._fail(exc) from None

    def _read_back(self, size: int) -> bytes:
        assert self._fd is not None
        chunks, offset = [], 0
        while chunk := os.pread(self._fd, min(size + 1 - offset, 1 << 24), offset):
            chunks.append(chunk)
            offset += len(chunk)
            if offset > size:
                break
        return b"".join(chunks)

    def commit(self) -> None:
        """Rename the temporary file over the destination and make the rename durable."""
        assert self._fd is not None and self._temporary is not None
        try:
            self.refuse_unsafe_destination()
            os.rename(self._temporary, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            self._temporary = None
            os.fsync(self._dir_fd)
        except OSError as exc:
            raise self._fail(exc) from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the temporary file (if not committed) and close every descriptor; safe to repeat."""
        if self._temporary is not None:
            with contextlib.suppress(OSError):  # already gone: nothing else of ours to clean
                os.unlink(self._temporary, dir_fd=self._dir_fd)
            self._temporary = None
        for fd in (self._fd, self._dir_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._fd, self._dir_fd = None, -1

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.discard()


def write_output(
    path: str | os.PathLike[str], data: bytes, mode: int | None = None, check: Check | None = None
) -> None:
    """Replace `path` with `data` (mode `mode`, default 0666 less the umask) only once `check` accepts
    the bytes read back from the new file; TargetError (exit 6) when the file system refuses."""
    with StagedOutput(path, mode) as output:
        output.write(data, check)
        output.commit()


def write_outputs(outputs: Sequence[tuple[str | os.PathLike[str], bytes, int | None]]) -> None:
    """Replace several files that belong together (a key pair): every one is written, checked and
    fsynced before the first rename, so a failure while writing leaves all of them as they were."""
    staged: list[StagedOutput] = []
    try:
        for path, data, mode in outputs:
            staged.append(StagedOutput(path, mode))
            staged[-1].write(data)
        for output in staged:
            output.commit()
    finally:
        for output in staged:
            output.discard()
