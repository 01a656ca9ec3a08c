"""What live apply, revert, verify and status share: the target lock, the image reader, the switch wait.

- `target_lock(pid)`: one loader at a time per process (flock on `run_dir()/pid-<pid>.lock`, removed after).
- `ProcessImageReader`: the compatibility check's image-reader interface over a running image.
- `baseline_images()`: the images of a process that are the package's baseline, by build-id.
- `wait_until_safe()`: stop every thread at a moment no thread is inside (or returns into) the
  code being switched, or refuse naming function and thread — and say when waiting cannot help.
- `free_allocations()`: unmap package memory at one briefly stopped thread; `retire_allocations()`:
  make the record pages of memory kept mapped inaccessible instead (loader/alloc.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpkg.errors import IncompatibleTarget, RefusedError, TargetError, UnsafeNow
from hpkg.formats.model import Package
from hpkg.loader import alloc
from hpkg.loader.alloc import Allocation
from hpkg.loader.hostdirs import run_dir
from hpkg.loader.inject import Injector
from hpkg.loader.process import Process, StoppedThreads
from hpkg.loader.procfs import RuntimeImage
from hpkg.loader.safety import CodeRange, PointerWord, ThreadsBusy, stop_when_safe
from hpkg.loader.window_check import SpanSwitch
from hpkg.loader.wine_threads import WindowsThreads

DEFAULT_TIMEOUT = 5.0
# `_start`, the ELF entry, calls __libc_start_main and never returns either; its return address sits
# above main's frames. It is not code a package replaces, so the outermost-frame test skips it.
_ENTRY_STUB_SIZE = 64


def lock_path(pid: int) -> Path:
    """The lock file of one target process, in hpkg's private run directory (/run/hpkg for root).

    Never in a world-writable place such as /run/lock: there any user could pre-create the lock of
    any pid, present or future, and block every apply and revert of it.
    """
    return run_dir() / f"pid-{pid}.lock"


def _open_locked(path: Path, pid: int, deadline: float) -> int:
    """A descriptor holding the flock on `path` while `path` still names that very file.

    The holder unlinks the file before it lets go, so a loader that opened the old file and then got
    its lock holds a lock on a name nobody sees any more: it checks the name still leads to the inode
    it locked, and starts over when not (the usual removal pattern for lock files).
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise TargetError(f"cannot open the lock {path}: {exc.strerror}") from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise TargetError(f"cannot lock {path}: {exc.strerror}") from None
                    if time.monotonic() > deadline:
                        busy = f"another hpkg is working on process {pid} (lock {path} held)"
                        raise RefusedError(busy) from None
                    time.sleep(0.05)
            locked = os.fstat(fd)
            try:
                named = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                named = None
            if named is not None and (named.st_dev, named.st_ino) == (locked.st_dev, locked.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed it: lock the file that is there now


@contextlib.contextmanager
def target_lock(pid: int, wait: float) -> Iterator[None]:
    """Hold the per-process loader lock, so two hpkg invocations never patch one process at once.

    Another loader working on the process is waited for up to `wait` seconds (the --timeout). The
    lock file is removed on the way out, while still locked; the kernel releases the flock if we die
    (the file then stays, and the next loader locks and removes it).
    """
    path = lock_path(pid)
    fd = _open_locked(path, pid, time.monotonic() + wait)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@dataclass(frozen=True)
class ProcessImageReader:
    """The compatibility check's ImageReader over one image of a running process."""

    process: Process
    image: RuntimeImage

    @property
    def build_id(self) -> bytes:
        return bytes.fromhex(self.image.build_id)

    @property
    def load_bias(self) -> int:
        return self.image.load_bias

    def read(self, link_address: int, size: int) -> bytes:
        try:
            return self.process.read(self.image.runtime_address(link_address), size)
        except TargetError:
            return b""


def open_process(pid: int) -> Process:
    """The process, or TargetError (exit 6) naming why it cannot be reached."""
    process = Process(pid)
    process.maps()  # permission problems surface here, before any lock or stop
    return process


def baseline_images(process: Process, package: Package) -> list[RuntimeImage]:
    """The images of `process` whose build-id is the package's baseline; IncompatibleTarget when none."""
    wanted = package.target.build_id.hex()
    images = process.find_images_by_build_id(wanted)
    if not images:
        hint = f" ({package.target.soname_hint})" if package.target.soname_hint else ""
        raise IncompatibleTarget(
            f"process {process.pid} runs no image with build-id {wanted}{hint}: "
            "not the baseline this package was built for",
            tuple(f"{i.path}: build-id {i.build_id or 'none'}" for i in process.images() if i.path[0] == "/"),
        )
    return images


def replaced_ranges(package: Package, image: RuntimeImage) -> tuple[list[CodeRange], list[CodeRange]]:
    """The baseline functions being replaced and their patch-site windows, as runtime ranges."""
    functions, windows = [], []
    for f in package.functions:
        start = image.runtime_address(f.baseline_address)
        functions.append(CodeRange(f.name, start, start + f.baseline_size))
        windows.append(CodeRange(f.name, start, start + len(f.pre_image)))
    return functions, windows


def _entry_point(process: Process, image: RuntimeImage) -> int | None:
    """The runtime address of the image's ELF entry (e_entry), read from its mapped header."""
    if not image.elf_type:  # a PE image under Wine (loader/pe_process): no ELF entry stub to step over
        return None
    try:
        (entry,) = struct.unpack("<Q", process.read(image.start + 24, 8))
    except TargetError:
        return None
    return image.runtime_address(entry) if entry else None


def _outermost(process: Process, tid: int, ranges: Sequence[CodeRange], image: RuntimeImage) -> str | None:
    """The function of `ranges` holding the outermost image code address on a thread's stack, if any.

    A replaced function that is the outermost frame of its image on a thread (main, a thread's start
    routine) returns only when the thread ends: waiting for it cannot help.
    """
    entry = _entry_point(process, image)
    with process.stop_thread(tid) as stopped:
        rsp = stopped.regs(tid).rsp
    stack = next((m for m in process.maps() if m.contains(rsp)), None)
    if stack is None:
        return None
    data = process.read(rsp & ~7, min(stack.end, (rsp & ~7) + (1 << 20)) - (rsp & ~7))
    code = [m for m in image.mappings if m.executable]
    outer = None
    for (word,) in struct.iter_unpack("<Q", data[: len(data) - len(data) % 8]):
        if entry is not None and entry <= word < entry + _ENTRY_STUB_SIZE:
            continue
        if any(m.contains(word) for m in code):
            outer = word
    if outer is None:
        return None
    return next((r.name for r in ranges if r.contains(outer)), None)


def explain_busy(process: Process, busy: ThreadsBusy, ranges: Sequence[CodeRange], image: RuntimeImage,
                 timeout: float) -> BusyRefusal:
    """Turn ThreadsBusy into the operator's refusal: which function, which thread, and whether to wait."""
    reasons = []
    never_returns = []
    for offender in busy.offenders:
        line = offender.describe()
        if offender.why:  # a Windows thread whose frames could not be followed: nothing to find outermost
            reasons.append(line)
            continue
        if offender in busy.always_active:
            outer = None
            with contextlib.suppress(TargetError):
                outer = _outermost(process, offender.tid, ranges, image)
            if outer == offender.range_name:
                never_returns.append(offender)
                line += (
                    f": {offender.range_name} is the outermost frame of thread {offender.tid} — a loop that "
                    "never returns, waiting cannot help; rebuild the baseline with "
                    "-flive-patching=inline-clone (GCC >= 9) so that a fix does not change it, "
                    "or restart the process"
                )
            else:
                line += f": it stayed there on every attempt for {timeout:g} s; retry later or wait longer"
        reasons.append(line)
    reasons.append(busy.tally())
    inside = [o for o in busy.offenders if not o.why]
    parts = []
    if inside:
        names = sorted({o.range_name for o in inside})
        threads = sorted({o.tid for o in inside})
        plural = "s" if len(threads) > 1 else ""
        parts.append(f"thread{plural} {', '.join(map(str, threads))} inside {', '.join(names)}")
    unproven = {o.tid: o.why for o in busy.offenders if o.why}
    parts += [f"thread {tid}'s Windows frames not proven: {why}" for tid, why in sorted(unproven.items())]
    what = "; ".join(parts)
    if never_returns:
        head = f"unsafe to switch: {what}, which never returns (waiting cannot help)"
    else:
        head = f"unsafe to switch after waiting {timeout:g} s: {what}"
    return BusyRefusal(head, tuple(reasons), busy.attempts, busy.stopped_seconds)


class BusyRefusal(UnsafeNow):
    """The refusal of a switch that found threads inside on every attempt until the deadline, with how
    many attempts were made and how long they held the threads stopped in all."""

    def __init__(self, message: str, reasons: tuple[str, ...], attempts: int, stopped_seconds: float) -> None:
        super().__init__(message, reasons)
        self.attempts = attempts
        self.stopped_seconds = stopped_seconds


@contextlib.contextmanager
def wait_until_safe(
    process: Process,
    replaced: Sequence[CodeRange],
    windows: Sequence[CodeRange],
    image: RuntimeImage,
    timeout: float,
    freed: Sequence[CodeRange] = (),
    fused: SpanSwitch | None = None,
    pointed: list[PointerWord] | None = None,
) -> Iterator[StoppedThreads]:
    """Hold every thread stopped at a safe moment for the switch; UnsafeNow (exit 4) at the deadline.

    `freed` is memory the caller frees right after: no register or stack word may point into it. Under
    Wine, with `pointed` given, such words are put there instead (every Windows stack's words too), and
    the caller keeps the memory they point into mapped. An ELF process ignores `pointed`: a word into
    `freed` makes its moment unsafe. `fused` is the caller's one-page switch when nothing else is
    written in the window: the check makes it (safety.stop_when_safe), and the switch's `run` reports
    its outcome.
    """
    # A PE image runs under Wine: each Windows thread is checked by its frames, walked by UNWIND_INFO.
    wine = WindowsThreads(process) if not image.elf_type else None
    try:
        with stop_when_safe(
            process, replaced, windows, timeout=timeout, pointer_ranges=freed, wine=wine, fused=fused,
            pointed=pointed if wine is not None else None,
        ) as stopped:
            yield stopped
    except ThreadsBusy as busy:
        raise explain_busy(process, busy, replaced, image, timeout) from None


def free_allocations(process: Process, allocations: Sequence[Allocation]) -> None:
    """Unmap package memory, injecting munmap at one briefly stopped thread."""
    if not allocations:
        return
    with process.stop_thread() as held, Injector(held) as injector:
        for allocation in allocations:
            alloc.free(injector, allocation)


def kept_mapped(word: PointerWord, owner: str, allocation: Allocation) -> str:
    """Why memory stays mapped, retired: `word` points into the memory of `owner` ("package …")."""
    size = f"{allocation.size // 1024} KiB"
    return (f"{word.describe()} points into the memory of {owner}, so its {size} at {allocation.start:#x}"
            " stay mapped (retired, not applied)")  # fmt: skip


def retire_allocations(process: Process, retired: Sequence[tuple[Allocation, int]]) -> None:
    """Make the record pages (up to each given end) of retired package memory inaccessible, injecting
    mprotect at one briefly stopped thread: the mark /proc/PID/maps shows of a retired allocation."""
    if not retired:
        return
    with process.stop_thread() as held, Injector(held) as injector:
        for allocation, record_end in retired:
            alloc.retire(injector, allocation, record_end)
