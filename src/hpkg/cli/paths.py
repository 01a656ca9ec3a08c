"""Click parameter types for the CLI's files, pids and timeouts: hostile values fail here, in one line.

Opening a FIFO blocks until a writer appears and reading a device or a huge sparse file never ends, so
an input file must be a regular file; an output must not replace a device, a directory or an input.
"""

from __future__ import annotations

import math
import os
import stat
from typing import Any

import click

from hpkg.errors import HpkgError, ImageError, PackageError

# Larger than any binary hpkg is meant to diff; reading a bigger (often sparse) file would take minutes.
MAX_BINARY_SIZE = 4 << 30

_KIND_NAMES = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def file_kind(mode: int) -> str:
    """A short name for what a non-regular file is, for error lines."""
    return _KIND_NAMES.get(stat.S_IFMT(mode), "not a regular file")


class InputFile(click.Path):
    """An existing-or-not path that, when it exists, must be a regular file of a sane size.

    A missing or unreadable file is left to the reader so that its own message (exit 3) is kept.
    """

    def __init__(self, error: type[HpkgError], max_size: int | None = None) -> None:
        super().__init__(dir_okay=False)
        self.error = error
        self.max_size = max_size

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("an empty path names no file", param, ctx)
        path = super().convert(value, param, ctx)
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            return path  # missing, a symlink loop, a name too long: the reader says which, in one line
        if not stat.S_ISREG(info.st_mode):
            raise self.error(f"{os.fsdecode(path)}: {file_kind(info.st_mode)}, not a regular file")
        if self.max_size is not None and info.st_size > self.max_size:
            raise self.error(
                f"{os.fsdecode(path)}: {info.st_size} bytes, larger than any binary hpkg reads"
                f" ({self.max_size} bytes)"
            )
        return path


class OutputFile(click.Path):
    """A path to write: a new file or an existing regular one, never a device, FIFO, directory or symlink."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("an empty path names no file", param, ctx)
        path = super().convert(value, param, ctx)
        try:
            info = os.lstat(path)
        except (OSError, ValueError):
            return path  # does not exist (yet), or cannot be reached: the writer reports it
        if stat.S_ISLNK(info.st_mode):
            # hpkg.atomic_output never follows nor replaces one; say so before any work is done.
            self.fail(f"{os.fsdecode(path)} is a symbolic link; refusing to write through it or replace it"
                      " (name the file it points to)", param, ctx)
        if not stat.S_ISREG(info.st_mode):
            self.fail(f"{os.fsdecode(path)} is {file_kind(info.st_mode)}; refusing to replace it", param, ctx)
        return path


def refuse_output_onto_input(output: str, inputs: dict[str, str | None], option: str = "-o") -> None:
    """Usage error when `output` names the same file as one of the inputs (it would be overwritten)."""
    for role, path in inputs.items():
        if path is None:
            continue
        try:
            same = os.path.samefile(output, path)
        except (OSError, ValueError):
            continue
        if same:
            raise click.BadParameter(
                f"{output} is {role}; refusing to overwrite an input", param_hint=f"'{option}'"
            )


BINARY = InputFile(ImageError, MAX_BINARY_SIZE)
PACKAGE = InputFile(PackageError)  # read_package_file caps the size it reads
KEY = InputFile(PackageError)  # the key readers cap the size they read

# A pid names one process: 0 and negative numbers mean process groups to kill(2), never a target.
PID = click.IntRange(min=1)
# How many processes `--all` works on at once (each in its own thread, stopped only for its switch).
JOBS = click.IntRange(min=1, max=64)


class Seconds(click.FloatRange):
    """A timeout in seconds within a range; NaN compares false with every bound, so reject it by name."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


TIMEOUT = Seconds(0.0, 3600.0)


class StoreDirectory(click.Path):
    """`--store DIR`: a directory path (created, made private and checked by the store itself). With
    `default_when_empty`, the option's flag value "" (`status --store` alone) names the default store."""

    def __init__(self, default_when_empty: bool = False) -> None:
        super().__init__(file_okay=False)
        self.default_when_empty = default_when_empty

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            if self.default_when_empty:
                return ""
            self.fail("an empty path names no directory", param, ctx)
        return super().convert(value, param, ctx)


STORE = StoreDirectory()
STORE_OR_DEFAULT = StoreDirectory(default_when_empty=True)
