"""Which of a set of baselines a process maps, cheaply enough to ask of every process again and again.

The agent asks this at every exec, again while a young process may still `dlopen`, and of every
process on each periodic rescan. loader/affected.py answers the same question for one command run,
parsing every mapping into a record; here /proc/PID/maps is read as bytes and only the lines that
start a file (file offset 0, an inode) are picked out by one regular expression, and the build-id
of each file is kept across scans by file identity (device, inode and the path the kernel shows,
which gains " (deleted)" once the file is unlinked), so a file is opened once however many processes
map it and however often they are scanned. `forget_unseen` drops the files no process mapped in the
last full pass: an inode is only reused after its file is gone, so a stale identity lives at most
one rescan period.

The build-id itself is read as loader/procfs reads it (through /proc/PID/map_files: a deleted or
replaced file is still the one mapped). A process that exits meanwhile simply maps nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hpkg.loader import procfs
from hpkg.loader.procfs import Mapping

# start-end perms offset dev inode path, for a mapping at file offset 0 of a file (inode != 0).
_FILE_START = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) 0+ ([0-9a-f]+:[0-9a-f]+) ([1-9][0-9]*) +(.*)$", re.MULTILINE
)

FileIdentity = tuple[bytes, int, bytes]  # device, inode, path as shown in the maps


@dataclass(frozen=True)
class MappedBaseline:
    """One baseline image in a process: its build-id and where its first mapping starts."""

    build_id: str
    start: int
    path: str


class BuildIdIndex:
    """Build-ids of mapped files, remembered by file identity; one per agent."""

    def __init__(self) -> None:
        self._known: dict[FileIdentity, str] = {}
        self._seen: set[FileIdentity] = set()
        self.files_read = 0  # how many files had to be opened (the rest came from memory)

    def baselines(self, pid: int, wanted: Iterable[str]) -> tuple[MappedBaseline, ...] | None:
        """The images of `pid` whose build-id is in `wanted`; None when the process is gone or unreadable."""
        try:
            with open(f"/proc/{pid}/maps", "rb") as maps:
                text = maps.read()
        except OSError:
            return None
        wanted = set(wanted)
        found: list[MappedBaseline] = []
        for match in _FILE_START.finditer(text):
            start, end, perms, dev, inode, path = match.groups()
            identity = (dev, int(inode), path)
            self._seen.add(identity)
            build_id = self._known.get(identity)
            if build_id is None:
                build_id = self._read_build_id(pid, Mapping(
                    int(start, 16), int(end, 16), perms.decode(), 0, dev.decode(), int(inode),
                    os.fsdecode(path)))
                if build_id is None:
                    continue  # gone meanwhile: nothing is remembered
                self._known[identity] = build_id
            if build_id and build_id in wanted:
                found.append(MappedBaseline(build_id, int(start, 16), os.fsdecode(path)))
        return tuple(found)

    def _read_build_id(self, pid: int, first: Mapping) -> str | None:
        """The file's build-id ("" when it has none or is no ELF image); None when the process went away."""
        self.files_read += 1
        image = procfs.image_from(pid, [first])
        if image is not None:
            return image.build_id or ""
        return "" if os.path.exists(f"/proc/{pid}") else None

    def begin_full_pass(self) -> None:
        """Start counting which files are mapped anywhere (see `forget_unseen`)."""
        self._seen = set()

    def forget_unseen(self) -> None:
        """After a pass over every process: drop the files none of them maps any more."""
        self._known = {k: v for k, v in self._known.items() if k in self._seen}

    def __len__(self) -> int:
        return len(self._known)


def process_ids() -> list[int]:
    """Every process of the machine (thread-group leaders), in /proc order."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
