"""Find every process of this machine that runs a given baseline, by the build-id of what it maps.

The machine-wide verbs (`apply --all`, `revert --all`, `status`, the agent) start here. A baseline
is recognised by the GNU build-id of a mapped file, read once per file (device and inode) however
many processes map it, through /proc/PID/map_files: that also reaches a library that `apt upgrade`
deleted or replaced on disk while processes still run it (the `(deleted)` case `needrestart`
reports). A process that exits during the scan is simply not listed; one whose maps cannot be read
(another user's, without root) is listed apart, so that a caller can say why it was not looked at.

`scan_for_packages` is the other question asked of every process: which ones carry hpkg package
memory (`/memfd:hpkg-…` in their maps)? It reads the maps alone, never the memory, so it is as cheap
as `grep` over /proc and stops nothing; what a record says is for loader/status.py to read. Retired
memory (a reverted package kept mapped because a word pointed into it) is not package memory applied:
the maps show it by its inaccessible record page (loader/alloc.py), and the scan passes over it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hpkg.errors import HpkgError
from hpkg.loader import procfs
from hpkg.loader.alloc import Allocation, find_allocations, retired_by_maps
from hpkg.loader.pe_process import pe_images
from hpkg.loader.process import Process
from hpkg.loader.procfs import Mapping, RuntimeImage


@dataclass(frozen=True)
class AffectedProcess:
    """One process that maps a wanted baseline: its pid, command name and that image."""

    pid: int
    command: str
    image: RuntimeImage


@dataclass(frozen=True)
class Scan:
    """The outcome of one pass over /proc: the processes found, and those that could not be read."""

    affected: tuple[AffectedProcess, ...]
    unreadable: tuple[int, ...]  # pids whose maps we may not read (permission)


def process_ids() -> Iterator[int]:
    """The pids in /proc, in ascending order (threads are not listed there, only thread-group leaders)."""
    pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    yield from pids


def command_of(pid: int) -> str:
    """The process's command name (/proc/PID/comm, at most 15 characters), or "" once it is gone."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().rstrip("\n")
    except OSError:
        return ""


def _maps_of(pid: int, unreadable: list[int]) -> tuple[Mapping, ...]:
    """The mappings of `pid`; none if it is gone or a kernel thread, and noted if we may not read them."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as maps:
            return tuple(procfs.parse_maps_line(line) for line in maps if line.strip())
    except PermissionError:
        unreadable.append(pid)
    except OSError:
        pass  # exited since /proc was listed
    return ()


def _file_key(first: Mapping) -> tuple[str, int]:
    # While a file is mapped its inode stays allocated, so (device, inode) names it uniquely even
    # after it was deleted: a replaced library is a new inode, never confused with the old one.
    return first.dev, first.inode


def scan_for_baselines(build_ids: Iterable[str], pids: Iterable[int] | None = None) -> Scan:
    """Every process (of `pids`, default all) with an image whose build-id is one of `build_ids`.

    Our own process is skipped: hpkg never patches itself.
    """
    wanted = {b.lower() for b in build_ids}
    known: dict[tuple[str, int], str] = {}  # file identity → build-id ("" when none or not ELF)
    affected: list[AffectedProcess] = []
    unreadable: list[int] = []
    me = os.getpid()
    for pid in process_ids() if pids is None else pids:
        if pid == me:
            continue
        maps = _maps_of(pid, unreadable)
        for group in procfs.group_by_file(maps):
            first = group[0]
            key = _file_key(first)
            build_id = known.get(key) if first.inode else None
            if build_id is not None and build_id not in wanted:
                continue
            image = procfs.image_from(pid, group)
            if image is None:
                if first.inode:
                    known[key] = ""
                continue
            if first.inode:
                known[key] = image.build_id or ""
            if image.build_id in wanted:
                affected.append(AffectedProcess(pid, command_of(pid), image))
    return Scan(tuple(affected), tuple(unreadable))


def scan_for_pe_baselines(identities: Iterable[str], pids: Iterable[int] | None = None) -> Scan:
    """Every process (of `pids`) running under Wine with a PE image whose identity is one of `identities`.

    Wine maps a PE image's headers from its file at offset 0 (loader/pe_process.py); only processes
    mapping such a file (a first page starting with MZ, read from the file) are read further, in memory.
    """
    wanted = {i.lower() for i in identities}
    known: dict[tuple[str, int], bool] = {}  # file identity → starts with MZ
    affected: list[AffectedProcess] = []
    unreadable: list[int] = []
    me = os.getpid()
    for pid in process_ids() if pids is None else pids:
        maps = _maps_of(pid, unreadable) if pid != me else ()
        if not any(_is_mz(pid, m, known) for m in maps if m.offset == 0 and m.inode):
            continue
        try:
            with Process(pid) as process:
                images = pe_images(process)
        except (HpkgError, OSError):
            continue  # exited, or its memory cannot be read: not a target
        affected += [AffectedProcess(pid, command_of(pid), i) for i in images if i.build_id in wanted]
    return Scan(tuple(affected), tuple(unreadable))


def _is_mz(pid: int, mapping: Mapping, known: dict[tuple[str, int], bool]) -> bool:
    """Whether the file behind a mapping starts with the MZ magic (read once per file)."""
    key = _file_key(mapping)
    if key not in known:
        try:
            with open(f"/proc/{pid}/map_files/{mapping.start:x}-{mapping.end:x}", "rb") as f:
                known[key] = f.read(2) == b"MZ"
        except OSError:
            return False
    return known[key]


@dataclass(frozen=True)
class CarryingProcess:
    """One process with hpkg package memory: its pid, command name and allocations (by name, unverified)."""

    pid: int
    command: str
    allocations: tuple[Allocation, ...]

    def may_carry(self, package_id: str) -> bool:
        """Whether an allocation's name says it holds `package_id` (`hpkg-<id>-<image>-<nonce>`).

        A name only narrows the search: what the record inside says is authenticated before anyone acts
        on it, and a process is never skipped for a name it could not have chosen (the loader names its
        memory; a target cannot rename another's memfd).
        """
        return any(a.name.startswith(f"hpkg-{package_id}-") for a in self.allocations)


@dataclass(frozen=True)
class PackageScan:
    """The processes carrying hpkg package memory, and those whose maps could not be read."""

    carrying: tuple[CarryingProcess, ...]
    unreadable: tuple[int, ...]


def scan_for_packages(pids: Iterable[int] | None = None) -> PackageScan:
    """Every process (of `pids`, default all) whose mappings include hpkg package memory, by pid."""
    carrying: list[CarryingProcess] = []
    unreadable: list[int] = []
    me = os.getpid()
    for pid in process_ids() if pids is None else pids:
        if pid == me:
            continue
        maps = _maps_of(pid, unreadable)
        allocations = [a for a in find_allocations(maps) if not retired_by_maps(maps, a)]
        if allocations:
            ordered = tuple(sorted(allocations, key=lambda a: a.start))
            carrying.append(CarryingProcess(pid, command_of(pid), ordered))
    return PackageScan(tuple(carrying), tuple(unreadable))
