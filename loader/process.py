"""A running process as a patch target: memory, mappings, threads, and stopping all threads safely.

Memory is read with process_vm_readv(2) and written through /proc/PID/mem, which (like a
debugger's breakpoint) writes through read-only code pages by copy-on-write.

`Process.stop_all_threads()` seizes and interrupts every thread, re-scanning /proc/PID/task until
no new thread appears, and on leaving — normally or by an exception — restores what it changed
and detaches every thread, so the process is never left stopped or traced. Threads are attached
with PTRACE_SEIZE (no SIGSTOP is ever sent), so if the loader itself dies the kernel detaches them
and they run on.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from hpkg.errors import RefusedError, TargetError
from hpkg.loader import procfs
from hpkg.loader import ptrace as pt
from hpkg.loader.interrupts import deferred_interrupts
from hpkg.loader.priority import first_in_line, real_time, share_expired, sharing
from hpkg.loader.procfs import Mapping, RuntimeImage
from hpkg.loader.ptrace import Registers, StopKind

# A process that keeps creating threads faster than we can stop them is given up on after this.
MAX_ATTACH_ROUNDS = 100
DEFAULT_STOP_TIMEOUT = 5.0
# Polls of a thread on its way to a stop before a real-time loader sleeps (loader/priority.py).
SPIN_POLLS = 20
# A thread that never reaches its stop (uninterruptible sleep) is waited for this long at release.
RELEASE_TIMEOUT = 60.0


def wait_one(tid: int, deadline: float) -> pt.WaitStatus:
    """Wait for the next ptrace stop (or exit) of one running thread, until a monotonic deadline."""
    idle = 0
    while True:
        status = pt.wait(tid, block=False)
        if status is not None:
            return status
        if time.monotonic() > deadline:
            raise TargetError(f"thread {tid} did not stop in time (state {procfs.thread_state(tid, tid)!r})")
        idle += 1
        if idle < 50 and not real_time():
            os.sched_yield()
        else:
            time.sleep(min(0.001, 0.00002 * idle))


class IOVec(ctypes.Structure):
    """struct iovec, for process_vm_readv(2)."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


libc = ctypes.CDLL(None, use_errno=True)
libc.process_vm_readv.restype = ctypes.c_ssize_t
libc.process_vm_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(IOVec),
    ctypes.c_ulong,
    ctypes.POINTER(IOVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]


# /proc/PID/stat field 9 (flags): PF_KTHREAD marks a kernel thread, which maps no program to patch.
PF_KTHREAD = 0x00200000


def _any_thread_alive(pid: int) -> bool:
    """Whether some thread of the process is neither a zombie nor dead."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(procfs.thread_state(pid, int(tid)) not in ("", "Z", "X") for tid in tids)


def _refuse_non_program(pid: int) -> None:
    """TargetError unless `pid` is the main thread of a live user-space process.

    /proc/TID exists for every thread id too (hidden from listings), and a kernel thread or a zombie has
    no mappings: each of them would otherwise read as "runs another build" or "nothing applied".
    """
    status = procfs.thread_status(pid, pid)
    if not status:
        raise TargetError(f"no such process: {pid}")
    tgid = status.get("Tgid", str(pid)).strip()
    if tgid != str(pid):
        raise TargetError(f"{pid} is a thread of process {tgid}; give --pid {tgid}")
    if status.get("State", " ")[:1] in ("Z", "X") and not _any_thread_alive(pid):
        # The main thread alone may be a zombie (it called pthread_exit) while the others run on.
        raise TargetError(f"process {pid} has exited (a zombie its parent has not reaped)")
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            text = stat.read()
    except OSError:
        raise TargetError(f"no such process: {pid}") from None
    # The command name (field 2) may contain spaces and parentheses: split after its last ")".
    flags = int(text[text.rindex(")") + 2 :].split()[6])
    if flags & PF_KTHREAD:
        raise TargetError(f"process {pid} is a kernel thread: it runs no program to patch")


class Process:
    """A live process addressed by pid: read/write memory, list mappings, threads and images."""

    def __init__(self, pid: int) -> None:
        if pid <= 0 or not os.path.isdir(f"/proc/{pid}/task"):
            raise TargetError(f"no such process: {pid}")
        _refuse_non_program(pid)
        self.pid = pid
        self.start_time = procfs.start_time(pid)
        self._mem_fd: int | None = None

    def close(self) -> None:
        """Close the cached /proc/PID/mem descriptor."""
        if self._mem_fd is not None:
            os.close(self._mem_fd)
            self._mem_fd = None

    def __enter__(self) -> Process:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        """Close the descriptor; a refusal made while the process died is reported as its death.

        A target killed mid-apply leaves /proc/PID/maps empty and its memory unreadable, so the
        build-id lookup or the pre-image check finds "another build" (exit 4); the truth is exit 6.
        """
        self.close()
        if isinstance(exc, RefusedError) and not self.alive():
            raise TargetError(f"process {self.pid} exited while hpkg was working on it") from exc

    def alive(self) -> bool:
        """Whether the process still exists: not a zombie, not exiting, its pid not reused."""
        return not procfs.has_exited(self.pid, self.start_time)

    # -- memory -------------------------------------------------------------------------------

    def _mem(self) -> int:
        if self._mem_fd is None:
            try:
                self._mem_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                raise TargetError(f"no such process: {self.pid}") from None
            except PermissionError:
                raise TargetError(
                    f"permission denied opening /proc/{self.pid}/mem; {procfs.permission_advice()}"
                ) from None
        return self._mem_fd

    def mem_descriptor(self) -> int:
        """The open /proc/PID/mem (opened on first use and kept: open it before a stop, not inside it)."""
        return self._mem()

    def read(self, runtime_address: int, size: int) -> bytes:
        """Read `size` bytes at a runtime address; TargetError if any part is unmapped."""
        if size <= 0:
            return b""
        buf = ctypes.create_string_buffer(size)
        local = IOVec(ctypes.cast(buf, ctypes.c_void_p), size)
        remote = IOVec(runtime_address, size)
        got = libc.process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got == size:
            return buf.raw
        if got < 0 and ctypes.get_errno() == errno.ESRCH:
            raise TargetError(f"no such process: {self.pid}")
        # process_vm_readv stops at pages without read permission (e.g. --x); /proc/PID/mem reads them.
        done = max(got, 0)
        try:
            rest = os.pread(self._mem(), size - done, runtime_address + done)
        except OSError as exc:
            rest = b""
            if exc.errno == errno.ESRCH:
                raise TargetError(f"no such process: {self.pid}") from None
        if len(rest) != size - done:
            raise TargetError(f"cannot read {size} bytes at {runtime_address:#x} in process {self.pid}")
        return buf.raw[:done] + rest

    def write(self, runtime_address: int, data: bytes) -> None:
        """Write bytes at a runtime address through /proc/PID/mem (works on read-only code pages)."""
        try:
            written = os.pwrite(self._mem(), data, runtime_address)
        except OSError as exc:
            where = f"{len(data)} bytes at {runtime_address:#x} in process {self.pid}"
            raise TargetError(f"cannot write {where}: {exc.strerror}") from None
        if written != len(data):
            raise TargetError(f"short write at {runtime_address:#x} in process {self.pid}")

    # -- structure ------------------------------------------------------------------------------

    def maps(self) -> tuple[Mapping, ...]:
        """The process's mappings (/proc/PID/maps)."""
        return procfs.read_maps(self.pid)

    def threads(self) -> tuple[int, ...]:
        """The process's thread ids (/proc/PID/task), main thread first."""
        return procfs.list_tids(self.pid)

    def images(self) -> tuple[RuntimeImage, ...]:
        """Every ELF image mapped in the process."""
        return procfs.list_images(self.pid)

    def find_images_by_build_id(self, build_id: str) -> list[RuntimeImage]:
        """The images whose GNU build-id equals `build_id`."""
        return procfs.find_images_by_build_id(self.pid, build_id)

    # -- stopping -------------------------------------------------------------------------------

    def stop_all_threads(
        self, timeout: float = DEFAULT_STOP_TIMEOUT
    ) -> contextlib.AbstractContextManager[StoppedThreads]:
        """Stop every thread (including ones created while attaching); always resume and detach them."""
        return self._stopped(None, timeout, stop=True)

    def seize_all_threads(
        self, timeout: float = DEFAULT_STOP_TIMEOUT
    ) -> contextlib.AbstractContextManager[StoppedThreads]:
        """Seize every thread without stopping any; `stop()` on the result stops them all at once.

        Threads the seized ones create are attached by the kernel (PTRACE_O_TRACECLONE), so the stop
        finds them too. Every thread is detached on leaving, as for `stop_all_threads()`.
        """
        return self._stopped(None, timeout, stop=False)

    def stop_thread(
        self, tid: int | None = None, timeout: float = DEFAULT_STOP_TIMEOUT
    ) -> contextlib.AbstractContextManager[StoppedThreads]:
        """Stop one thread (the main thread by default) while the others keep running."""
        if tid is None:
            # The main thread, unless it has exited (pthread_exit) and stays a zombie leader.
            live = [t for t in self.threads() if procfs.thread_state(self.pid, t) not in ("", "Z", "X")]
            tid = live[0] if live else self.pid
        return self._stopped(tid, timeout, stop=True)

    @contextlib.contextmanager
    def _stopped(self, only: int | None, timeout: float, stop: bool) -> Iterator[StoppedThreads]:
        """Hold `only` (or every thread, seized and, with `stop`, stopped); on any exit undo what failed
        and detach every thread."""
        stopped = StoppedThreads(self)
        # Ctrl-C lands after the release, never while a thread is held; every thread held, the loader runs
        # ahead of the threads it wakes (loader/priority.py).
        first = first_in_line() if only is None else contextlib.nullcontext(False)
        with deferred_interrupts(), first:
            try:
                if only is not None:
                    stopped._attach(only=only, timeout=timeout)
                else:
                    stopped.seize_running(timeout)
                    if stop:
                        stopped.stop(timeout)
                yield stopped
            except BaseException:
                stopped._release(failed=True)
                raise
            else:
                stopped._release(failed=False)


@dataclass
class StoppedThreads:
    """The threads held stopped by one `stop_all_threads()`/`stop_thread()`, with an undo journal."""

    process: Process
    held: dict[int, StopKind] = field(default_factory=dict)  # tid -> how it is stopped
    gone: set[int] = field(default_factory=set)  # threads that exited while we attached
    redelivered: list[tuple[int, int]] = field(default_factory=list)  # (tid, signal) passed on
    stopped_at: float = 0.0  # perf_counter when the first thread was interrupted
    resumed_at: float = 0.0  # perf_counter when the last thread was detached
    # Called with each thread as it reaches its stop, while others are still on the way (the safety check
    # reads its registers there: a held thread's registers do not change).
    on_held: Callable[[int], None] | None = None
    # Called when a poll finds a thread not stopped yet, before the loader yields or sleeps: work for the
    # stopped ones can be done meanwhile (the one-call check reads their registers there).
    on_idle: Callable[[], None] | None = None
    attempts: int = 1  # stops made to find a safe moment, this one included (stop_when_safe)
    stopped_before: float = 0.0  # seconds the earlier, unsafe attempts held the threads stopped
    # (switch, outcome, errno) of a one-page switch the window's one-call check made (loader/window_check.py).
    switched: tuple[object, int, int] | None = None
    # (step, perf_counter at its end) inside the window, for the bench's breakdown (`window_steps`).
    marks: list[tuple[str, float]] = field(default_factory=list)
    # More marks, made in the window but turned into marks only when `window_steps` asks (the one-call
    # check's own times: no Python for them while the threads wait).
    later_marks: Callable[[], list[tuple[str, float]]] | None = None
    _seized: set[int] = field(default_factory=set)
    _original_regs: dict[int, Registers] = field(default_factory=dict)
    _journal: list[tuple[int, bytes]] = field(default_factory=list)
    # Threads that died while traced and whose exit is not reaped yet (see `_reap`).
    _unreaped: set[int] = field(default_factory=set)

    @property
    def tids(self) -> tuple[int, ...]:
        """The threads currently held stopped."""
        return tuple(sorted(self.held, key=lambda tid: tid != self.process.pid))

    @property
    def seized(self) -> list[int]:
        """The threads seized (held or not)."""
        return list(self._seized)

    @property
    def pause(self) -> float:
        """Seconds from the first interrupt to the last detach (valid after release)."""
        end = self.resumed_at or time.perf_counter()
        return end - self.stopped_at if self.stopped_at else 0.0

    def mark(self, step: str) -> None:
        """Note that `step` of the window ends now (one list append: cheap enough for inside it)."""
        self.marks.append((step, time.perf_counter()))

    def window_steps(self) -> tuple[tuple[str, float], ...]:
        """Each marked step of the last stop and the time it took, in seconds, ending with the release
        (valid after release); their sum is `pause`."""
        steps, previous = [], self.stopped_at
        marks = sorted([*self.marks, *(self.later_marks() if self.later_marks else ())], key=lambda m: m[1])
        for step, at in (*marks, ("release", self.resumed_at)):
            if at >= previous:
                steps.append((step, at - previous))
                previous = at
        return tuple(steps)

    def regs(self, tid: int) -> Registers:
        """The registers of a held thread."""
        return pt.get_regs(tid)

    def set_regs(self, tid: int, regs: Registers) -> None:
        """Set a held thread's registers; the first value seen is restored on release."""
        self._original_regs.setdefault(tid, pt.get_regs(tid))
        pt.set_regs(tid, regs)

    def write(self, runtime_address: int, data: bytes) -> None:
        """Write target memory, remembering the pre-image so an exception undoes it."""
        pre_image = self.process.read(runtime_address, len(data))
        self._journal.append((runtime_address, pre_image))
        self.process.write(runtime_address, data)

    def remember(self, runtime_address: int, pre_image: bytes) -> None:
        """Journal bytes that another path (an injected system call) is about to overwrite, for the undo."""
        self._journal.append((runtime_address, pre_image))

    # -- attach / wait / release ----------------------------------------------------------------

    def _attach(self, only: int, timeout: float) -> None:
        """Seize and interrupt one thread and wait for its stop."""
        deadline = time.monotonic() + timeout
        self._seize_one(only, trace_clone=False)
        if only in self._seized:
            self.stopped_at = time.perf_counter()
            with contextlib.suppress(TargetError):
                pt.interrupt(only)  # fails only when exiting: wait_stopped then reports the exit
            self.wait_stopped([only], deadline)
        if only not in self.held:
            raise TargetError(f"thread {only} of process {self.process.pid} exited")

    def seize_running(self, timeout: float) -> None:
        """Seize every thread without stopping it, listing /proc/PID/task again until none is new.

        Seized with PTRACE_O_TRACECLONE: a thread one of them creates from now on is attached by the
        kernel and reported to `stop()` through its creator's clone event.
        """
        deadline = time.monotonic() + timeout
        for _round in range(MAX_ATTACH_ROUNDS):
            new = [tid for tid in self.process.threads() if tid not in self._seized and tid not in self.gone]
            if not new:
                if not self._seized:
                    raise TargetError(f"process {self.process.pid} exited")
                if procfs.start_time(self.process.pid) != self.process.start_time:
                    raise TargetError(f"process {self.process.pid} exited and its pid was reused")
                return
            for tid in new:
                self._seize_one(tid, trace_clone=True)
            if time.monotonic() > deadline:
                break
        raise TargetError(f"process {self.process.pid} keeps creating threads; cannot seize them all")

    def stop(self, timeout: float) -> None:
        """Stop every seized thread: interrupt them all first, then collect the stops.

        A thread created since the seize arrives through its creator's clone event. A last listing of
        /proc/PID/task, once all are stopped (no thread can create another then), catches a thread
        whose creation raced with its creator's seize; such a thread is seized and stopped too.
        """
        deadline = time.monotonic() + timeout
        self.marks.clear()
        self.later_marks = None
        self.stopped_at = time.perf_counter()
        running = [tid for tid in self._seized if tid not in self.held]
        for tid in running:
            with contextlib.suppress(TargetError):
                pt.interrupt(tid)  # fails only when exiting: wait_stopped then reports the exit
        self.mark("interrupt")
        with sharing():
            self.wait_stopped(running, deadline)
        self.mark("wait")
        for _round in range(MAX_ATTACH_ROUNDS):
            new = [tid for tid in self.process.threads() if tid not in self._seized and tid not in self.gone]
            if not new:
                if not self.held:
                    raise TargetError(f"process {self.process.pid} exited")
                self.mark("list threads")
                return
            for tid in new:
                self._seize_one(tid, trace_clone=True)
                if tid in self._seized:
                    with contextlib.suppress(TargetError):
                        pt.interrupt(tid)
            self.wait_stopped([tid for tid in new if tid in self._seized], deadline)
        raise TargetError(f"process {self.process.pid} keeps creating threads; cannot stop them all")

    def _seize_one(self, tid: int, trace_clone: bool) -> None:
        try:
            pt.seize(tid, trace_clone)
        except TargetError:
            if trace_clone and pt.tracer_of(tid) == threading.get_native_id():  # TracerPid is a tid
                # Created by a thread seized already: the kernel attached it (it waits in its first
                # stop, which `stop()` collects).
                self._seized.add(tid)
                return
            if procfs.thread_state(self.process.pid, tid) in ("", "Z", "X"):
                self.gone.add(tid)  # exited (or a zombie leader) between listing and attaching
                return
            raise
        self._seized.add(tid)

    def wait_stopped(self, tids: list[int], deadline: float) -> None:
        """Wait until each seized, running thread is in an interrupt or group stop (or gone).

        The threads are taken in turn, each polled until it reports: all were interrupted at once,
        so by the time one has stopped most others have too, and the polls stay one or two per thread.
        A signal-delivery-stop on the way is the signal arriving for the thread: it is passed on at
        once (PTRACE_CONT with that signal), so nothing is lost, and the interrupt is renewed (that
        stop consumed it), so the thread stops right after its handler frame is set up. A clone event
        names a thread the kernel attached: it is waited for as well (it starts in an interrupt stop).
        """
        pending = list(reversed(tids))
        idle = 0
        while pending:
            tid = pending[-1]
            status = pt.wait(tid, block=False)
            if status is not None:
                idle = 0
                if status.kind in (StopKind.INTERRUPT, StopKind.GROUP_STOP):
                    self.held[tid] = status.kind
                    pending.pop()
                    if self.on_held is not None:
                        self.on_held(tid)
                elif status.kind == StopKind.EXITED:
                    pending.pop()
                    self.mark_gone(tid)
                else:
                    if status.kind == StopKind.EVENT and status.event == pt.PTRACE_EVENT_CLONE:
                        self._adopt(pt.event_message(tid), pending)
                    sig = status.signal if status.kind == StopKind.SIGNAL else 0
                    if sig:
                        self.redelivered.append((tid, sig))
                    self._resume_quietly(tid, sig)
                continue
            idle += 1
            if self.on_idle is not None:
                self.on_idle()
            if idle % 64 == 63:
                self._forget_dead(pending)
                if time.monotonic() > deadline:
                    states = ", ".join(f"{t} ({procfs.thread_state(self.process.pid, t)})" for t in pending)
                    hint = "a thread in state D is in uninterruptible I/O"
                    raise TargetError(f"threads did not stop in time: {states}; {hint}")
            share_expired()
            if real_time():
                # First in line, a yield gives way to no fair-scheduled thread: poll a little (the other
                # CPUs bring the threads to their stops), then sleep so that this CPU can too.
                if idle > SPIN_POLLS:
                    time.sleep(min(0.001, 0.00002 * (idle - SPIN_POLLS)))
            elif idle < 50:
                os.sched_yield()
            else:
                time.sleep(min(0.001, 0.00002 * idle))

    def _adopt(self, child: int, pending: list[int]) -> None:
        """A thread the kernel attached when a seized thread created it: it is ours to stop and detach."""
        if child and child not in self._seized:
            self._seized.add(child)
            self.gone.discard(child)
            pending.insert(0, child)

    def _forget_dead(self, pending: list[int]) -> None:
        """Drop threads that are zombies or gone: they never stop again. A SIGKILLed process's leader
        stays a zombie until its other threads are reaped, and its exit may be reported to its parent
        only, so waiting for it (as a release after the kill did, for a whole minute) cannot end."""
        for tid in list(pending):
            if procfs.thread_state(self.process.pid, tid) in ("Z", "X", ""):
                pending.remove(tid)
                self.mark_gone(tid)
                self._unreaped.add(tid)  # reaped by `_reap` at the release, once the kernel reports it

    def _resume_quietly(self, tid: int, sig: int) -> None:
        # Any ptrace stop consumes a pending PTRACE_INTERRUPT (the kernel clears JOBCTL_TRAP_STOP on
        # every trap), so ask again before resuming, or the thread would run on and never stop.
        with contextlib.suppress(TargetError):
            pt.interrupt(tid)
            pt.cont(tid, sig)  # fails only when gone: the next wait reports it

    def _reap(self, deadline: float) -> None:
        """Wait for the exit of every thread that died while traced. Until the tracer reaps it, such a
        thread stays a zombie its parent cannot reap (the parent's wait blocks), and only the loader can:
        a long-running agent would keep it for good. A leader's exit is reported once its other threads
        are reaped, so all are polled in turn. A SIGKILLed thread exits at once unless it is in
        uninterruptible sleep, hence the deadline (the release's)."""
        pending = set(self._unreaped)
        while pending:
            for tid in list(pending):
                try:
                    status = pt.wait(tid, block=False)  # already reaped or not ours: EXITED (ECHILD)
                except TargetError:
                    status = pt.WaitStatus(tid, StopKind.EXITED, 0)
                if status is None:
                    continue
                if status.kind == StopKind.EXITED:
                    pending.discard(tid)
                else:  # a stop after all: it was not dying, so it can be let go now
                    with contextlib.suppress(TargetError):
                        pt.detach(tid, 0)
                        pending.discard(tid)
            if pending and time.monotonic() > deadline:
                break
            if pending:
                time.sleep(0.0005)
        self._unreaped.clear()

    def mark_gone(self, tid: int) -> None:
        """Forget a thread that exited while held or running."""
        self.held.pop(tid, None)
        self._seized.discard(tid)
        self._original_regs.pop(tid, None)
        self.gone.add(tid)

    def _release(self, failed: bool) -> None:
        """Undo journaled writes (on failure), restore changed registers, detach every thread."""
        problems: list[str] = []
        if failed:
            for runtime_address, pre_image in reversed(self._journal):
                try:
                    self.process.write(runtime_address, pre_image)
                except TargetError as exc:
                    problems.append(str(exc))
        self._journal.clear()
        # Threads seized but never seen stopped hold a pending interrupt: wait for them so that
        # none stays traced (PTRACE_DETACH works only on a stopped tracee).
        running = [tid for tid in self._seized if tid not in self.held]
        if running:
            for tid in running:
                with contextlib.suppress(TargetError):
                    pt.interrupt(tid)
            with contextlib.suppress(TargetError):
                self.wait_stopped(running, time.monotonic() + RELEASE_TIMEOUT)
        for tid, regs in self._original_regs.items():
            if tid in self.held:
                try:
                    pt.set_regs(tid, regs)
                except TargetError as exc:
                    problems.append(str(exc))
        self._original_regs.clear()
        for tid in list(self._seized):
            try:
                pt.detach(tid, 0)
            except TargetError:
                self._unreaped.add(tid)  # killed while held (SIGKILL wakes a stopped tracee): it exits
            self._seized.discard(tid)
        self.held.clear()
        self.resumed_at = time.perf_counter()
        self._reap(time.monotonic() + RELEASE_TIMEOUT)
        if problems and not failed:
            raise TargetError("; ".join(problems))
