"""The switch: write every patch site in one system call, so a loader killed mid-switch leaves no mix.

Writing N sites through /proc/PID/mem takes N writes; a loader killed between two of them would let
the process run with some functions switched and others not. Instead, while every thread is held
stopped, the loader lays out a table in its own allocation (the new bytes, and two iovec arrays:
where they are, where they go) and injects at one stopped thread:

  1. mprotect(span of the sites, r-x → rwx)   code pages are read-only; process_vm_writev honours that
  2. process_vm_writev(self, table, N, sites, N) every site in one call: a killed loader cannot
                                                 interrupt a system call the target is executing, and
                                                 the injection gadget resumes the thread after it
  3. mprotect(span, back to its protection)

A loader killed before 2 completes leaves no site written; after 2, every site. What it can leave
is the span of code pages still writable (rwx) if it dies between 1 and 3; `hpkg status` does not
repair that (a restart of the process does). When this path is not possible — the sites are not in
one mapping, the table does not fit, the target is under seccomp, or mprotect is refused (W^X
policies) — the switch falls back to /proc/PID/mem writes site by site, and says so.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hpkg.elf.constants import PF_R, PF_W, PF_X
from hpkg.errors import RefusedError, TargetError
from hpkg.loader.inject import GADGET_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE, Injector, scratch_at
from hpkg.loader.process import StoppedThreads
from hpkg.loader.procfs import PAGE_SIZE, RuntimeImage, page_up
from hpkg.loader.record import PatchRecord, encoded_size

SYS_PROCESS_VM_WRITEV = 311
_IOVEC = struct.Struct("<QQ")
ONE_CALL = "one process_vm_writev"
SITE_BY_SITE = "/proc/PID/mem, site by site"


@dataclass(frozen=True)
class SiteWrite:
    """Bytes to put at one runtime address (the caller has checked what is there now)."""

    address: int
    data: bytes


@dataclass(frozen=True)
class Table:
    """Room in the package allocation for the switch table: runtime [start, end), readable by the target,
    and executable room for the injection gadget (the slack after the package code), when there is some."""

    start: int
    end: int
    gadget: int | None = None


def gadget_room(code_end: int) -> int | None:
    """The start of the injection gadget's room in the package's last code page, if it fits there."""
    start = (code_end + 15) & ~15
    return start if page_up(code_end) - start >= GADGET_SIZE else None


def switch_table(record: PatchRecord) -> Table:
    """The table's room after a record's body on its read-only pages, the gadget's after its code."""
    start = (record.allocation.start + encoded_size(record) + 15) & ~15
    return Table(start, record.area("record")[1], gadget_room(record.area("code")[1]))


def _protection(perms: str) -> int:
    return (PROT_READ if perms[0] == "r" else 0) | (PROT_WRITE if perms[1] == "w" else 0) | (
        PROT_EXEC if perms[2] == "x" else 0
    )


def _layout(writes: Sequence[SiteWrite], table: Table) -> tuple[bytes, int, int] | None:
    """The table bytes, and the runtime addresses of the local and remote iovec arrays; None if too big."""
    data_start = table.start + 2 * _IOVEC.size * len(writes)
    local, remote, data = bytearray(), bytearray(), bytearray()
    for write in writes:
        local += _IOVEC.pack(data_start + len(data), len(write.data))
        remote += _IOVEC.pack(write.address, len(write.data))
        data += write.data
    blob = bytes(local + remote + data)
    if table.start + len(blob) > table.end:
        return None
    return blob, table.start, table.start + len(local)


def write_sites(
    stopped: StoppedThreads, writes: Sequence[SiteWrite], table: Table | None, image: RuntimeImage
) -> str:
    """Write every site while all threads are held; one system call when possible. Returns the method.

    Every write is journaled in `stopped`, so an exception before the caller's block ends undoes it.
    """
    if writes and table is not None and _write_in_one_call(stopped, writes, table, image):
        return ONE_CALL
    for write in writes:
        stopped.write(write.address, write.data)
    return SITE_BY_SITE


def _segment_protection(image: RuntimeImage, low: int, high: int) -> int | None:
    """The protection the ELF program header gives [low, high): what the pages must return to."""
    for segment in image.segments:
        start = image.runtime_address(segment.link_address)
        if start & ~(PAGE_SIZE - 1) <= low and high <= start + segment.memory_size + PAGE_SIZE:
            flags = segment.flags
            return (PROT_READ if flags & PF_R else 0) | (PROT_WRITE if flags & PF_W else 0) | (
                PROT_EXEC if flags & PF_X else 0
            )
    return None


def _write_in_one_call(
    stopped: StoppedThreads, writes: Sequence[SiteWrite], table: Table, image: RuntimeImage
) -> bool:
    """The mprotect / process_vm_writev / mprotect sequence; False (nothing written) when not possible."""
    process = stopped.process
    low = min(w.address for w in writes) & ~(PAGE_SIZE - 1)
    high = page_up(max(w.address + len(w.data) for w in writes))
    mapping = next((m for m in process.maps() if m.start <= low and high <= m.end), None)
    layout = _layout(writes, table)
    if mapping is None or layout is None:
        return False
    blob, local_iov, remote_iov = layout
    # The program header's protection, not the current one: that repairs code pages an earlier,
    # interrupted switch left writable.
    original = _segment_protection(image, low, high)
    if original is None:
        original = _protection(mapping.perms)
    total = sum(len(w.data) for w in writes)
    try:
        # The gadget in the package's own code page: no search through the images while threads wait.
        scratch = scratch_at(process, table.gadget) if table.gadget is not None else None
        injector = Injector(stopped, scratch=scratch)
    except RefusedError:
        return False  # seccomp: an unexpected system call could kill the target
    with injector:
        process.write(table.start, blob)
        try:
            injector.mprotect(low, high - low, PROT_READ | PROT_WRITE | PROT_EXEC)
        except TargetError:
            return False  # e.g. a W^X policy refuses writable code
        try:
            for write in writes:
                stopped.remember(write.address, process.read(write.address, len(write.data)))
            own_pid = injector.getpid()  # the target's own view of its pid (pid namespaces)
            written = injector.syscall(SYS_PROCESS_VM_WRITEV, own_pid, local_iov, len(writes), remote_iov,
                                       len(writes), 0)
        finally:
            injector.mprotect(low, high - low, original)
    if written != total:
        raise TargetError(f"process_vm_writev in process {process.pid} wrote {written} of {total} bytes")
    return True
