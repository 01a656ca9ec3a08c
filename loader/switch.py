"""The switch: every patch site written at once while the threads are held, all or nothing.

Everything that does not need the threads stopped is done before the stop (`prepare_switch`): the
bytes now at every site (and every byte the caller's checks cover) are read, the new bytes computed,
the method chosen and its table laid out in the package's allocation. Inside the window only this is
left (`PreparedSwitch.run`):

  one page   every site lies in one page of code (the usual patch): one process_vm_readv compares
             the span with what was read before the stop, one pwrite of /proc/PID/mem writes the span
             with every site switched, one process_vm_readv checks it. /proc/PID/mem writes through
             the read-only code page (FOLL_FORCE, copy-on-write, as a debugger's breakpoint), so no
             mprotect is needed; the kernel copies at most one page per step, and one page is pinned
             once (after the only check for a fatal signal): a loader killed during the call leaves
             the span written entirely or not at all. (process_vm_writev from the loader cannot
             write read-only code pages, so it is not used here.)
  injected   the sites span several pages: the span's protection goes r-x → rwx, then one
             process_vm_writev executed by a stopped thread of the target itself writes every site,
             then the protection goes back; a killed loader cannot interrupt a system call the target
             executes, and the injection gadget resumes the thread after it (loader/inject.py). The
             iovec table was written before the stop; the target's own pid (pid namespaces) read
             from /proc/PID/status. What a death can leave is the span of code pages still writable
             (rwx) between the two mprotects; `hpkg status` does not repair that (a restart does).
  by site    when injection is impossible (sites in several mappings, no room for the table, a
             seccomp filter, a W^X policy refusing the mprotect): one /proc/PID/mem write per site,
             and the output says so, since for those microseconds a mix is possible.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hpkg.elf.constants import PF_R, PF_W, PF_X
from hpkg.errors import IncompatibleTarget, TargetError
from hpkg.loader import procfs, thread_scan
from hpkg.loader.inject import GADGET_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE, Injector, Scratch, scratch_at
from hpkg.loader.process import Process, StoppedThreads
from hpkg.loader.procfs import PAGE_SIZE, RuntimeImage, page_up
from hpkg.loader.record import PatchRecord, encoded_size
from hpkg.loader.window_check import SpanSwitch, journal_switch
from hpkg.loader.window_native import (
    SWITCH_CHANGED,
    SWITCH_DONE,
    SWITCH_NOT_STUCK,
    SWITCH_UNREAD,
    SWITCH_WRITE_FAILED,
    WindowHelper,
)

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


@dataclass(frozen=True)
class Injection:
    """The injected path's inputs, all computed before the stop."""

    low: int  # the page span of the sites
    high: int
    original: int  # the protection the span returns to
    local_iov: int  # runtime addresses of the iovec arrays in the table
    remote_iov: int
    count: int
    own_pid: int  # the target's pid as the target sees it
    scratch: Scratch | None  # the gadget's room in the package's code page


@dataclass(frozen=True)
class StateWrite:
    """A word written right after the sites, in the same window (the record's state: "applied"), with what
    it replaces (for the undo)."""

    address: int
    data: bytes
    before: bytes


def _reason(error: int) -> str:
    return f": {os.strerror(error)}" if error else ""


@dataclass(frozen=True)
class PreparedSwitch:
    """The switch of one image, ready to run in the window: the writes, the bytes they replace and the
    method. `span` is the one page's [start, end) holding every write and check (one-page method)."""

    writes: tuple[SiteWrite, ...]
    checks: tuple[SiteWrite, ...]  # bytes found before the stop that must still be there in the window
    method: str
    span: tuple[int, int] | None = None
    before: bytes = b""  # the span (one page) as read before the stop
    after: bytes = b""  # the span with every write applied
    injection: Injection | None = None

    def found(self, address: int, size: int) -> bytes:
        """The bytes read at `address` before the stop (for the caller's checks of what is there)."""
        for check in self.checks:
            if check.address <= address and address + size <= check.address + len(check.data):
                offset = address - check.address
                return check.data[offset : offset + size]
        raise KeyError(address)

    def run(self, stopped: StoppedThreads, changed: str, state: StateWrite | None = None) -> str:
        """Inside the window: compare, write every site, check the result, then write `state` (the
        record's state word, when given); the method used.

        IncompatibleTarget(`changed`) when a checked byte is no longer what was read before the stop;
        TargetError when a write did not stick. Every write is journaled in `stopped`, so an exception
        before the hold ends undoes it. With the window's helper the one-page path is one call.
        """
        if stopped.switched is not None and stopped.switched[0] is self:  # made by the window's check
            _owner, outcome, error = stopped.switched
            return self._settle(stopped.process, outcome, error, changed, state)
        helper = thread_scan.HELPER
        if helper is not None and self.span is not None and self.writes:
            return self._run_native(helper, stopped, changed, state)
        method = self._run(stopped, changed)
        if state is not None:
            stopped.remember(state.address, state.before)
            stopped.process.write(state.address, state.data)
        return method

    def fused(self, process: Process, state: StateWrite | None = None) -> SpanSwitch | None:
        """This switch (with the record's `state` word) as the window's one-call check makes it when every
        thread passes; None off the one-page path, which the check cannot make. Call before the stop; pass
        it to `stop_when_safe` only when nothing else is written in the window before the switch."""
        if thread_scan.HELPER is None or self.span is None or not self.writes:
            return None
        if state is None:
            return SpanSwitch(self, process.mem_descriptor(), self.span[0], self.before, self.after)
        return SpanSwitch(self, process.mem_descriptor(), self.span[0], self.before, self.after,
                          state.address, state.data, state.before)  # fmt: skip

    def _run_native(
        self, helper: WindowHelper, stopped: StoppedThreads, changed: str, state: StateWrite | None
    ) -> str:
        """The one-page path as one helper call (compare, pwrite, read back, state word): no Python between
        the system calls; the outcomes raise what the Python path raises."""
        span = self.fused(stopped.process, state)
        assert span is not None
        scratch = ctypes.create_string_buffer(len(span.before))
        outcome, error = helper.switch_span(span.mem_fd, span.address, span.before, span.after,
                                            span.state_address, span.state, scratch)  # fmt: skip
        journal_switch(stopped, outcome, span)
        return self._settle(stopped.process, outcome, error, changed, state)

    def _settle(
        self, process: Process, outcome: int, error: int, changed: str, state: StateWrite | None
    ) -> str:
        """The method, when the helper's switch was made; else what the Python path raises for the same
        failure (what it wrote is journaled already)."""
        assert self.span is not None
        start, end = self.span
        if outcome == SWITCH_DONE:
            return self.method
        if outcome == SWITCH_CHANGED:
            raise IncompatibleTarget(changed, self._differences(process))
        if outcome == SWITCH_UNREAD:
            raise TargetError(f"cannot read {end - start} bytes at {start:#x} in process {process.pid}"
                              f"{_reason(error)}")  # fmt: skip
        if outcome == SWITCH_WRITE_FAILED:
            raise TargetError(f"cannot write {end - start} bytes at {start:#x} in process {process.pid}"
                              f"{_reason(error)}")  # fmt: skip
        if outcome == SWITCH_NOT_STUCK:
            raise TargetError(f"the switch at {start:#x} in process {process.pid} did not stick")
        assert state is not None
        where = f"{len(state.data)} bytes at {state.address:#x} in process {process.pid}"
        raise TargetError(f"cannot write {where}{_reason(error)}")

    def _run(self, stopped: StoppedThreads, changed: str) -> str:
        """The Python path of `run`, without the state word."""
        process = stopped.process
        if self.span is not None:
            start, end = self.span
            if process.read(start, end - start) != self.before:
                raise IncompatibleTarget(changed, self._differences(process))
            if not self.writes:
                return SITE_BY_SITE  # nothing to write: every site holds its pre-image already
            stopped.remember(start, self.before)
            process.write(start, self.after)
            if process.read(start, end - start) != self.after:
                raise TargetError(f"the switch at {start:#x} in process {process.pid} did not stick")
            return self.method
        for check in self.checks:
            if process.read(check.address, len(check.data)) != check.data:
                raise IncompatibleTarget(changed, self._differences(process))
        if self.injection is None or not _injected(stopped, self.writes, self.injection, self):
            for write in self.writes:
                stopped.remember(write.address, self.found(write.address, len(write.data)))
                process.write(write.address, write.data)
            method = SITE_BY_SITE
        else:
            method = ONE_CALL
        for write in self.writes:
            if process.read(write.address, len(write.data)) != write.data:
                raise TargetError(f"the switch at {write.address:#x} in process {process.pid} did not stick")
        return method

    def _differences(self, process: Process) -> tuple[str, ...]:
        out = []
        for check in self.checks:
            try:
                now = process.read(check.address, len(check.data))
            except TargetError:
                now = b""
            if now != check.data:
                out.append(f"at {check.address:#x}: holds {now.hex()}, was {check.data.hex()}")
        return tuple(out)


ONE_PAGE = "one /proc/PID/mem write (one page)"


def prepare_switch(
    process: Process,
    writes: Sequence[SiteWrite],
    checks: Sequence[tuple[int, int]],
    table: Table | None,
    image: RuntimeImage,
) -> PreparedSwitch:
    """Read what the writes replace and every checked range (address, size), and choose the method,
    while the process runs; on the injected path, write its table into the package allocation."""
    ranges = [(w.address, len(w.data)) for w in writes] + list(checks)
    if not ranges:
        return PreparedSwitch((), (), SITE_BY_SITE)
    low = min(a for a, _ in ranges)
    high = max(a + n for a, n in ranges)
    process.mem_descriptor()  # opened now: inside the window the switch writes through it
    if in_one_page(low, high) and not _left_writable(process, image, low, high):
        before = process.read(low, high - low)
        after = bytearray(before)
        for write in writes:
            after[write.address - low : write.address - low + len(write.data)] = write.data
        found = tuple(SiteWrite(a, before[a - low : a - low + n]) for a, n in sorted(set(ranges)))
        return PreparedSwitch(tuple(writes), found, ONE_PAGE, (low, high), before, bytes(after))
    found = tuple(SiteWrite(a, process.read(a, n)) for a, n in sorted(set(ranges)))
    injection = _prepare_injection(process, writes, table, image) if table is not None else None
    return PreparedSwitch(tuple(writes), found, ONE_CALL if injection else SITE_BY_SITE, injection=injection)


def in_one_page(low: int, high: int) -> bool:
    """Whether [low, high) lies in one page: then one /proc/PID/mem write is all or nothing."""
    return low // PAGE_SIZE == (high - 1) // PAGE_SIZE


def _left_writable(process: Process, image: RuntimeImage, low: int, high: int) -> bool:
    """Whether the code page is not at its program header's protection (an earlier switch interrupted
    between its mprotects left it rwx): the injected path then puts that protection back."""
    page = low & ~(PAGE_SIZE - 1)
    mapping = next((m for m in process.maps() if m.start <= page and high <= m.end), None)
    wanted = _segment_protection(image, page, page_up(high))
    return mapping is not None and wanted is not None and _protection(mapping.perms) != wanted


def _own_pid(process: Process) -> int:
    """The target's pid in its own pid namespace: the last NSpid of /proc/PID/status."""
    fields = procfs.thread_status(process.pid, process.pid).get("NSpid", "").split()
    return int(fields[-1]) if fields else process.pid


def _prepare_injection(
    process: Process, writes: Sequence[SiteWrite], table: Table, image: RuntimeImage
) -> Injection | None:
    """The injected path's table, written now into the allocation; None when the path is impossible."""
    low = min(w.address for w in writes) & ~(PAGE_SIZE - 1)
    high = page_up(max(w.address + len(w.data) for w in writes))
    mapping = next((m for m in process.maps() if m.start <= low and high <= m.end), None)
    layout = _layout(writes, table)
    seccomp = procfs.thread_status(process.pid, process.pid).get("Seccomp", "0").strip()
    if mapping is None or layout is None or seccomp == "2":
        return None  # seccomp: an unexpected system call could kill the target
    blob, local_iov, remote_iov = layout
    # The program header's protection, not the current one: that repairs code pages an earlier,
    # interrupted switch left writable.
    original = _segment_protection(image, low, high)
    if original is None:
        original = _protection(mapping.perms)
    process.write(table.start, blob)
    # The gadget in the package's own code page: no search through the images while threads wait.
    scratch = scratch_at(process, table.gadget) if table.gadget is not None else None
    return Injection(low, high, original, local_iov, remote_iov, len(writes), _own_pid(process), scratch)


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


def _injected(
    stopped: StoppedThreads, writes: Sequence[SiteWrite], plan: Injection, switch: PreparedSwitch
) -> bool:
    """The mprotect / process_vm_writev / mprotect sequence; False (nothing written) when refused."""
    process = stopped.process
    total = sum(len(w.data) for w in writes)
    with Injector(stopped, scratch=plan.scratch, allow_seccomp=True) as injector:  # checked before the stop
        try:
            injector.mprotect(plan.low, plan.high - plan.low, PROT_READ | PROT_WRITE | PROT_EXEC)
        except TargetError:
            return False  # e.g. a W^X policy refuses writable code
        try:
            for write in writes:
                stopped.remember(write.address, switch.found(write.address, len(write.data)))
            iovecs = (plan.local_iov, plan.count, plan.remote_iov, plan.count)
            written = injector.syscall(SYS_PROCESS_VM_WRITEV, plan.own_pid, *iovecs, 0)
        finally:
            injector.mprotect(plan.low, plan.high - plan.low, plan.original)
    if written != total:
        raise TargetError(f"process_vm_writev in process {process.pid} wrote {written} of {total} bytes")
    return True
