"""A thin, typed ctypes layer over Linux x86-64 ptrace(2) and waitpid(2); errno becomes TargetError.

Only the requests the loader needs are here. Threads are attached with PTRACE_SEIZE and never
with PTRACE_O_EXITKILL: the target must outlive the loader, and a tracer that dies (even by
SIGKILL) lets every seized thread run on, because SEIZE never sends SIGSTOP.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import signal
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from hpkg.errors import TargetError
from hpkg.loader import procfs

# Request numbers from <sys/ptrace.h> / <linux/ptrace.h>.
PTRACE_CONT = 7
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_GETEVENTMSG = 0x4201

# Options for PTRACE_SEIZE. EXITKILL (0x100000) is deliberately absent.
PTRACE_O_TRACESYSGOOD = 0x1
# Threads a traced thread creates are attached too (seized, starting in an interrupt stop), and the
# creator reports a PTRACE_EVENT_CLONE stop whose event message is the new thread's id.
PTRACE_O_TRACECLONE = 0x8
PTRACE_EVENT_CLONE = 3

# A stop reported as (status >> 16) == PTRACE_EVENT_STOP is an interrupt stop (SIGTRAP) or a
# group-stop (the stopping signal) of a seized thread.
PTRACE_EVENT_STOP = 128

PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_SYSCALL_INFO_EXIT = 2

# waitpid flags: __WALL waits for threads (clone children) too.
WNOHANG = 1
WALL = 0x40000000

# Signals whose event stop means group-stop rather than our PTRACE_INTERRUPT.
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.waitpid.restype = ctypes.c_int
_libc.waitpid.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int]

@dataclass(frozen=True)
class Registers:
    """The general-purpose register set of one stopped thread, as unsigned 64-bit values."""

    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int

    def signed(self, name: str) -> int:
        """One register read as a signed 64-bit value (rax and orig_rax carry -errno and -1)."""
        value = getattr(self, name)
        return value - (1 << 64) if value >= 1 << 63 else value


# The field order of Registers is the order of struct user_regs_struct.
_REG_NAMES = tuple(f.name for f in dataclasses.fields(Registers))


class UserRegs(ctypes.Structure):
    """struct user_regs_struct for x86-64 (<sys/user.h>), the layout PTRACE_GETREGS fills."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in _REG_NAMES]


class StopKind(Enum):
    """What a waitpid status says happened to a traced thread."""

    INTERRUPT = "interrupt"  # PTRACE_EVENT_STOP with SIGTRAP: our PTRACE_INTERRUPT took effect
    GROUP_STOP = "group-stop"  # PTRACE_EVENT_STOP with a stopping signal: job control
    SIGNAL = "signal"  # signal-delivery-stop: a signal is about to be delivered
    SYSCALL = "syscall"  # syscall entry/exit stop (PTRACE_O_TRACESYSGOOD: SIGTRAP | 0x80)
    EVENT = "event"  # another PTRACE_EVENT_* stop
    EXITED = "exited"  # the thread is gone (exit or killed by a signal)


@dataclass(frozen=True)
class WaitStatus:
    """A decoded waitpid status of one thread."""

    tid: int
    kind: StopKind
    signal: int  # the stop signal, or the terminating signal / exit code for EXITED
    event: int = 0  # the PTRACE_EVENT_* number of an EVENT stop (PTRACE_EVENT_CLONE: a new thread)


@dataclass(frozen=True)
class SyscallInfo:
    """The PTRACE_GET_SYSCALL_INFO answer at a syscall stop: entry (nr, args) or exit (return value)."""

    op: int
    instruction_pointer: int
    nr: int
    return_value: int


class _SyscallInfoStruct(ctypes.Structure):
    # struct ptrace_syscall_info: op, pad, arch, ip, sp, then a union (entry: nr + 6 args,
    # exit: s64 rval + u8 is_error); both union members start with one 64-bit field.
    _fields_ = [
        ("op", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("stack_pointer", ctypes.c_uint64),
        ("first", ctypes.c_uint64),
        ("rest", ctypes.c_uint64 * 7),
    ]


def tracer_of(tid: int) -> int:
    """The TracerPid of a thread from /proc, or 0 when unknown."""
    try:
        with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _yama_ptrace_scope() -> int:
    """The Yama ptrace restriction level (0 when Yama is absent)."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as scope:
            return int(scope.read())
    except (OSError, ValueError):
        return 0


def _error(what: str, tid: int, err: int) -> TargetError:
    """Turn an errno from a ptrace request into an actionable TargetError."""
    if err == errno.ESRCH:
        return TargetError(f"{what} thread {tid}: no such process or thread (it exited or is not stopped)")
    if err == errno.EPERM:
        tracer = tracer_of(tid)
        if tracer and tracer != os.getpid():
            return TargetError(
                f"{what} thread {tid}: already traced by process {tracer} (a debugger?); detach it and retry"
            )
        scope = _yama_ptrace_scope()
        if scope >= 3:
            # Yama's mode 3 forbids attaching to everyone, root included, and cannot be lowered until reboot.
            return TargetError(
                f"{what} thread {tid}: permission denied by kernel.yama.ptrace_scope=3, which no user "
                "can pass; reboot with a lower setting"
            )
        if scope > 0 and os.geteuid() != 0:
            return TargetError(
                f"{what} thread {tid}: permission denied by kernel.yama.ptrace_scope={scope}; "
                "run as root (CAP_SYS_PTRACE) or set the sysctl to 0"
            )
        return TargetError(f"{what} thread {tid}: permission denied; {procfs.permission_advice()}")
    return TargetError(f"{what} thread {tid}: {os.strerror(err)}")


def _ptrace(request: int, tid: int, addr: int | None, data: int | ctypes.c_void_p | None, what: str) -> int:
    """Call ptrace(2) once and raise TargetError on failure."""
    ctypes.set_errno(0)
    result = _libc.ptrace(request, tid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise _error(what, tid, err)
    return result


def seize(tid: int, trace_clone: bool = False) -> None:
    """Attach to one thread without stopping it (PTRACE_SEIZE), reporting syscall stops distinctly;
    with `trace_clone`, threads it creates from now on are attached as well (PTRACE_O_TRACECLONE)."""
    options = PTRACE_O_TRACESYSGOOD | (PTRACE_O_TRACECLONE if trace_clone else 0)
    _ptrace(PTRACE_SEIZE, tid, None, options, "attach to")


def event_message(tid: int) -> int:
    """The message of a thread's last PTRACE_EVENT stop (PTRACE_GETEVENTMSG): for a clone, the new tid."""
    message = ctypes.c_ulong(0)
    _ptrace(PTRACE_GETEVENTMSG, tid, None, ctypes.addressof(message), "read the event of")
    return message.value


def interrupt(tid: int) -> None:
    """Ask a seized thread to stop (PTRACE_INTERRUPT); the stop is reported through waitpid."""
    _ptrace(PTRACE_INTERRUPT, tid, None, None, "interrupt")


def cont(tid: int, sig: int = 0) -> None:
    """Resume a stopped thread, delivering `sig` when it is not 0 (PTRACE_CONT)."""
    _ptrace(PTRACE_CONT, tid, None, sig, "resume")


def syscall(tid: int, sig: int = 0) -> None:
    """Resume a stopped thread until the next syscall entry or exit (PTRACE_SYSCALL)."""
    _ptrace(PTRACE_SYSCALL, tid, None, sig, "resume to syscall")


def detach(tid: int, sig: int = 0) -> None:
    """Detach from a stopped thread and let it run (PTRACE_DETACH)."""
    _ptrace(PTRACE_DETACH, tid, None, sig, "detach from")


def get_regs(tid: int) -> Registers:
    """Read the general-purpose registers of a stopped thread (PTRACE_GETREGS)."""
    raw = UserRegs()
    _ptrace(PTRACE_GETREGS, tid, None, ctypes.addressof(raw), "read registers of")
    return Registers(**{name: getattr(raw, name) for name in _REG_NAMES})


# Reads many stopped threads' registers (an array of tids) into consecutive slots at an address in one call
# (loader/window_native.WindowHelper.read_registers); how many it read (fewer: that one failed).
BatchRegisterReader = Callable[[array, int], int]


def read_registers(tid: int, address: int) -> bool:
    """PTRACE_GETREGS of a stopped thread into struct user_regs_struct at `address`; whether it was read."""
    return _libc.ptrace(PTRACE_GETREGS, tid, None, address) != -1


class RegisterFile:
    """PTRACE_GETREGS of many threads into one preallocated array, one slot per thread in the order read:
    no Python object is made per thread while the world is stopped (`words` views them all at once)."""

    SLOT_WORDS = ctypes.sizeof(UserRegs) // 8  # 27 words of struct user_regs_struct
    RIP, RSP = _REG_NAMES.index("rip"), _REG_NAMES.index("rsp")

    def __init__(self, capacity: int = 64) -> None:
        self.tids: list[int] = []
        self.slot_of: dict[int, int] = {}
        self._allocate(max(capacity, 1))

    def _allocate(self, capacity: int) -> None:
        array = (ctypes.c_uint64 * (capacity * self.SLOT_WORDS))()
        if self.tids:
            ctypes.memmove(array, self._array, ctypes.sizeof(self._array))
        self._array, self._capacity = array, capacity
        self._base = ctypes.addressof(array)

    def clear(self) -> None:
        """Forget every thread (a new stop reads them again); the array is kept."""
        self.tids.clear()
        self.slot_of.clear()

    def reserve(self, capacity: int) -> None:
        """Room for `capacity` slots (the recorded ones kept)."""
        if capacity > self._capacity:
            self._allocate(capacity)

    def adopt(self, tids: list[int]) -> RegisterFile:
        """Take slots 0 .. len(tids) - 1 as read for `tids`, in that order (the window's one-call check
        read them there); the file itself."""
        self.tids = list(tids)
        self.slot_of = {tid: slot for slot, tid in enumerate(tids)}
        return self

    def record(self, tid: int) -> int:
        """Read a stopped thread's registers into the next slot; the slot."""
        slot = len(self.tids)
        if slot == self._capacity:
            self._allocate(2 * self._capacity)
        if _libc.ptrace(PTRACE_GETREGS, tid, None, self._base + slot * self.SLOT_WORDS * 8) == -1:
            raise _error("read registers of", tid, ctypes.get_errno())
        self.tids.append(tid)
        self.slot_of[tid] = slot
        return slot

    def record_all(self, tids: list[int], helper: BatchRegisterReader | None) -> None:
        """Read every one of `tids` (all stopped) into the next slots: in one call of the window's helper
        when there is one, else one `record` each. A thread the helper could not read is read alone, so
        its error is the one `record` reports."""
        if helper is None:
            for tid in tids:
                self.record(tid)
            return
        while len(self.tids) + len(tids) > self._capacity:
            self._allocate(2 * self._capacity)
        first = len(self.tids)
        done = helper(array("i", tids), self._base + first * self.SLOT_WORDS * 8)
        self.tids += tids[:done]
        self.slot_of.update(zip(tids[:done], range(first, first + done), strict=True))
        if done < len(tids):
            self.record(tids[done])  # raises the thread's error (or reads it, if that was transient)
            self.record_all(tids[done + 1 :], helper)

    @property
    def address(self) -> int:
        """The address of slot 0 (valid until the file grows)."""
        return self._base

    def words(self) -> memoryview:
        """Every recorded slot as 64-bit words (slot i at [i * SLOT_WORDS, (i + 1) * SLOT_WORDS))."""
        return memoryview(self._array).cast("B").cast("Q")[: len(self.tids) * self.SLOT_WORDS]

    def buffer(self) -> memoryview:
        """The recorded slots as bytes, for a search of their words."""
        return memoryview(self._array).cast("B")[: len(self.tids) * self.SLOT_WORDS * 8]


def set_regs(tid: int, regs: Registers) -> None:
    """Write the general-purpose registers of a stopped thread (PTRACE_SETREGS)."""
    raw = UserRegs(**{name: getattr(regs, name) & 0xFFFFFFFFFFFFFFFF for name in _REG_NAMES})
    _ptrace(PTRACE_SETREGS, tid, None, ctypes.addressof(raw), "write registers of")


def get_syscall_info(tid: int) -> SyscallInfo:
    """Which syscall a thread stopped at and whether at entry or exit (PTRACE_GET_SYSCALL_INFO)."""
    info = _SyscallInfoStruct()
    _ptrace(PTRACE_GET_SYSCALL_INFO, tid, ctypes.sizeof(info), ctypes.addressof(info), "read syscall of")
    value = info.first
    signed = value - (1 << 64) if value >= 1 << 63 else value
    is_entry = info.op == PTRACE_SYSCALL_INFO_ENTRY
    return SyscallInfo(
        op=info.op,
        instruction_pointer=info.instruction_pointer,
        nr=value if is_entry else -1,
        return_value=signed if info.op == PTRACE_SYSCALL_INFO_EXIT else 0,
    )


def decode_status(tid: int, status: int) -> WaitStatus:
    """Decode a waitpid status word of a traced thread."""
    if status & 0x7F == 0:  # WIFEXITED
        return WaitStatus(tid, StopKind.EXITED, (status >> 8) & 0xFF)
    if status & 0xFF != 0x7F:  # WIFSIGNALED
        return WaitStatus(tid, StopKind.EXITED, status & 0x7F)
    sig = (status >> 8) & 0xFF
    event = status >> 16
    if event == PTRACE_EVENT_STOP:
        kind = StopKind.GROUP_STOP if sig in STOP_SIGNALS else StopKind.INTERRUPT
        return WaitStatus(tid, kind, sig)
    if event:
        return WaitStatus(tid, StopKind.EVENT, sig, event)
    if sig == signal.SIGTRAP | 0x80:
        return WaitStatus(tid, StopKind.SYSCALL, signal.SIGTRAP)
    return WaitStatus(tid, StopKind.SIGNAL, sig)


def wait(tid: int, block: bool = True) -> WaitStatus | None:
    """waitpid(tid, __WALL); None when `block` is False and the thread has nothing to report."""
    status = ctypes.c_int(0)
    while True:
        ctypes.set_errno(0)
        got = _libc.waitpid(tid, ctypes.byref(status), WALL | (0 if block else WNOHANG))
        if got == -1:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err == errno.ECHILD:
                # Not (or no longer) our tracee: it exited and was reaped, or was never attached.
                return WaitStatus(tid, StopKind.EXITED, 0)
            raise _error("wait for", tid, err)
        if got == 0:
            return None
        return decode_status(tid, status.value)
