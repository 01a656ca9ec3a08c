"""Allocate the package's memory inside the target, within ±2 GiB of an image, and free it again.

The replacement code is entered by `jmp rel32` from the image's patch sites and itself uses rel32
calls and rip-relative references back into the image, so every byte of the allocation must be
within ±2 GiB of every byte of the image. The memory is a private mapping of a memfd, so that
/proc/PID/maps names it `/memfd:hpkg-<id> (deleted)` and a later `status` or `revert` finds it;
private, so that a fork of the target gets copy-on-write memory like any other.

A retired allocation (a reverted package whose memory a word of the process may still point into,
loader/revert.py) stays mapped, its record pages made inaccessible (`retire`): its maps line then
shows `---p` at the allocation's start, where applied memory shows the record's `r--p`, so that a scan
of /proc/PID/maps alone (loader/affected.py) passes over it. hpkg still reads the record there through
/proc/PID/mem, which reads pages the process itself may not.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

from hpkg.errors import TargetError
from hpkg.loader.inject import (
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    InjectedSyscallError,
    Injector,
)
from hpkg.loader.procfs import PAGE_SIZE, Mapping, RuntimeImage, page_up

MEMFD_PREFIX = "/memfd:"
RW = PROT_READ | PROT_WRITE
REL32_REACH = 1 << 31
# Keep clear of regions that grow: the brk heap grows up, the main stack grows down.
HEAP_GUARD = 64 << 20
STACK_GUARD = 64 << 20
USER_SPACE_END = 0x7FFF_FFFF_F000  # 47-bit user address space (4-level paging)


@dataclass(frozen=True)
class Allocation:
    """A region mapped into the target for a package: runtime [start, start + size)."""

    start: int
    size: int
    name: str  # the memfd name, without the "/memfd:" prefix

    @property
    def end(self) -> int:
        return self.start + self.size


def _mmap_min_addr() -> int:
    try:
        with open("/proc/sys/vm/mmap_min_addr", encoding="ascii") as f:
            return max(int(f.read()), PAGE_SIZE)
    except (OSError, ValueError):
        return 0x10000


def reach_window(image_start: int, image_end: int) -> tuple[int, int]:
    """Runtime [low, high) inside which an allocation stays within rel32 reach of the whole image."""
    return max(image_end - REL32_REACH + PAGE_SIZE, 0), image_start + REL32_REACH - PAGE_SIZE


def candidate_addresses(
    maps: tuple[Mapping, ...], image: RuntimeImage, size: int, above: bool = False
) -> Iterator[int]:
    """Page-aligned addresses of free gaps where `size` bytes fit within reach, nearest to the image first
    (only above the image when `above`: a package whose unwind rules extend the image's range)."""
    size = page_up(size)
    low, high = reach_window(image.start, image.end)
    bounds = sorted((m.start, m.end, m.path) for m in maps)
    candidates = []
    previous_end, previous_path = _mmap_min_addr(), ""
    for start, end, path in [*bounds, (USER_SPACE_END, USER_SPACE_END, "")]:
        gap_low = previous_end + (HEAP_GUARD if previous_path == "[heap]" else 0)
        gap_high = start - (STACK_GUARD if path == "[stack]" else 0)
        gap_low, gap_high = max(gap_low, low), min(gap_high, high)
        if gap_high - gap_low >= size:
            # Below the image: as high as possible; above it: as low as possible.
            below = gap_high <= image.start
            address = (gap_high - size) & ~(PAGE_SIZE - 1) if below else page_up(gap_low)
            if gap_low <= address and address + size <= gap_high:
                distance = image.start - address if address < image.start else address - image.end
                candidates.append((distance, address))
        previous_end, previous_path = max(previous_end, end), path
    for _, address in sorted(candidates):
        if not above or address >= image.end:
            yield address


def allocate_near(
    injector: Injector, image: RuntimeImage, size: int, name: str, above: bool = False
) -> Allocation:
    """Map `size` bytes (read-write) named `/memfd:<name>` within ±2 GiB of `image` (above it if `above`)."""
    size = page_up(size)
    fd = injector.memfd_create(name)
    try:
        injector.ftruncate(fd, size)
        for address in candidate_addresses(injector.process.maps(), image, size, above):
            try:
                got = injector.mmap(address, size, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd)
            except InjectedSyscallError as exc:
                if exc.errno == errno.EEXIST:
                    continue  # something was mapped there since we read the maps
                raise
            if got == address:
                return Allocation(address, size, name)
            # A kernel before 4.17 ignores MAP_FIXED_NOREPLACE and treats the address as a hint.
            injector.munmap(got, size)
    finally:
        injector.close_fd(fd)
    side = "above and " if above else ""
    where = f"{side}within ±2 GiB of {image.path} in process {injector.process.pid}"
    raise TargetError(f"no free gap of {size} bytes {where}")


def protect(injector: Injector, allocation: Allocation, offset: int, length: int, prot: int) -> None:
    """Set the protection of part of an allocation (code r-x, data rw-)."""
    injector.mprotect(allocation.start + offset, page_up(length), prot)


def free(injector: Injector, allocation: Allocation) -> None:
    """Unmap an allocation."""
    injector.munmap(allocation.start, allocation.size)


def retire(injector: Injector, allocation: Allocation, record_end: int) -> None:
    """Make a retired allocation's record pages [start, record_end) inaccessible: the maps mark of
    retirement. The package's code and data keep their protections (a word may still use them)."""
    injector.mprotect(allocation.start, page_up(record_end - allocation.start), PROT_NONE)


def retired_by_maps(maps: tuple[Mapping, ...], allocation: Allocation) -> bool:
    """Whether the maps show `allocation` retired: its first page mapped without any access."""
    return any(m.start == allocation.start and m.perms.startswith("---") for m in maps)


def find_allocations(maps: tuple[Mapping, ...], prefix: str = "hpkg-") -> list[Allocation]:
    """The memfd allocations of a process whose name starts with `prefix`, merged per name."""
    found: dict[str, list[Mapping]] = {}
    for mapping in maps:
        path = mapping.file_path
        if path.startswith(MEMFD_PREFIX + prefix):
            found.setdefault(path[len(MEMFD_PREFIX) :], []).append(mapping)
    return [
        Allocation(min(m.start for m in group), max(m.end for m in group) - min(m.start for m in group), name)
        for name, group in found.items()
    ]
