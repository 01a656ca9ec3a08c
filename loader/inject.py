"""Raw system calls executed by one stopped thread of the target, never a call into its libc.

Calling the target's libc could deadlock it: a thread may hold malloc's or the dynamic loader's
lock. So the loader makes the thread execute a bare `syscall` instruction of its own, through a
small *gadget* written into memory no thread executes (the slack after the last section of an
executable segment, up to the end of its page, restored afterwards):

    G+0   syscall
    G+2   lea rsp,[rsp-128]; push [saved rflags]; popfq; lea rsp,[rsp+128]   (skips the red zone)
          mov rax..r15,[saved …]                                              (15 registers)
          jmp [saved rip]
    G+136 save area: rflags, rip, rax … r15 of the thread as it must resume

The loader drives the thread with PTRACE_SYSCALL: it sees the entry and the exit of the injected
call, reads the result, then puts the original registers back. If the loader dies at any moment
(even SIGKILL), the kernel detaches the thread, which simply runs on: through the syscall, through
the restore code, and back to where it was. So no moment leaves a thread pointing at an injected
call with nobody to finish it.

A thread stopped inside an interrupted system call has rax = -ERESTART* and orig_rax = the call
number; the kernel restarts such a call (rip -= 2, rax = orig_rax) only on its way back from the
stop. The save area holds that restarted state, so the self-restoring path restarts the call too;
the normal path hands the raw registers back with an interrupt pending, so the kernel itself makes
the restart decision exactly as if the loader had never been there.
"""

from __future__ import annotations

import dataclasses
import errno as errno_names
import struct
import time
from dataclasses import dataclass

from hpkg.errors import RefusedError, TargetError
from hpkg.loader import procfs
from hpkg.loader import ptrace as pt
from hpkg.loader.process import Process, StoppedThreads, wait_one
from hpkg.loader.ptrace import Registers, StopKind

SYS_CLOSE = 3
SYS_MMAP = 9
SYS_MPROTECT = 10
SYS_MUNMAP = 11
SYS_GETPID = 39
SYS_FTRUNCATE = 77
SYS_RESTART_SYSCALL = 219
SYS_MEMFD_CREATE = 319

PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000
MFD_CLOEXEC = 0x1
MFD_EXEC = 0x10  # Linux >= 6.3: ask for an executable memfd where vm.memfd_noexec would refuse one

# Kernel-internal return values of an interrupted syscall (include/linux/errno.h).
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516

SYSCALL_INSN_SIZE = 2  # 0f 05

# Register numbers for ModRM encoding, and the order of the save area after rflags and rip.
_GPR_NUMBERS = {
    "rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rbp": 5, "rsi": 6, "rdi": 7,
    "r8": 8, "r9": 9, "r10": 10, "r11": 11, "r12": 12, "r13": 13, "r14": 14, "r15": 15,
}  # fmt: skip
_SAVE_ORDER = ("eflags", "rip", *_GPR_NUMBERS)
CODE_SIZE = 136  # gadget code (133 bytes) padded to 8
SAVE_SIZE = 8 * len(_SAVE_ORDER)
NAME_SIZE = 64  # room for a memfd name
GADGET_SIZE = CODE_SIZE + SAVE_SIZE + NAME_SIZE


def assemble_gadget(address: int) -> bytes:
    """Machine code of the gadget placed at `address`, its save area at `address + CODE_SIZE`."""
    save = address + CODE_SIZE
    slot = {name: save + 8 * index for index, name in enumerate(_SAVE_ORDER)}
    code = bytearray(b"\x0f\x05")  # syscall
    code += b"\x48\x8d\x64\x24\x80"  # lea rsp,[rsp-0x80]: step over the red zone before pushing
    code += b"\xff\x35" + struct.pack("<i", slot["eflags"] - (address + len(code) + 6))  # push [rip+d]
    code += b"\x9d"  # popfq
    code += b"\x48\x8d\xa4\x24\x80\x00\x00\x00"  # lea rsp,[rsp+0x80] (lea leaves the flags alone)
    for name, number in _GPR_NUMBERS.items():
        rex = 0x48 | (0x04 if number >= 8 else 0)  # REX.W, plus REX.R for r8..r15
        modrm = ((number & 7) << 3) | 0b101  # [rip+disp32]
        disp = slot[name] - (address + len(code) + 7)
        code += bytes((rex, 0x8B, modrm)) + struct.pack("<i", disp)  # mov reg,[rip+disp32]
    code += b"\xff\x25" + struct.pack("<i", slot["rip"] - (address + len(code) + 6))  # jmp [rip+d]
    assert len(code) <= CODE_SIZE
    return bytes(code.ljust(CODE_SIZE, b"\xcc"))


def resume_registers(raw: Registers) -> Registers:
    """The registers a thread resumes with after its stop, applying the kernel's syscall restart."""
    orig_rax = raw.signed("orig_rax")
    rax = raw.signed("rax")
    if orig_rax < 0:
        return raw
    if rax in (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND):
        return dataclasses.replace(raw, rax=raw.orig_rax, rip=raw.rip - SYSCALL_INSN_SIZE)
    if rax == -ERESTART_RESTARTBLOCK:
        return dataclasses.replace(raw, rax=SYS_RESTART_SYSCALL, rip=raw.rip - SYSCALL_INSN_SIZE)
    return raw


def save_area_bytes(regs: Registers) -> bytes:
    """The save area content that makes the gadget resume a thread with `regs`."""
    return struct.pack(f"<{len(_SAVE_ORDER)}Q", *(getattr(regs, name) for name in _SAVE_ORDER))


@dataclass(frozen=True)
class Scratch:
    """Target memory that holds the gadget: unused bytes of executable code, restored afterwards."""

    address: int
    size: int
    pre_image: bytes


def scratch_at(process: Process, runtime_address: int) -> Scratch:
    """Use GADGET_SIZE bytes of executable memory the loader owns (e.g. in its allocation) as scratch."""
    return Scratch(runtime_address, GADGET_SIZE, process.read(runtime_address, GADGET_SIZE))


def find_scratch(process: Process) -> Scratch:
    """Find GADGET_SIZE bytes after the end of an executable segment, within its last page."""
    images = process.images()
    ordered = sorted(images, key=lambda image: image.path == "[vdso]")
    for image in ordered:
        if image.path == "[vdso]":
            continue
        for segment in image.segments:
            if not segment.executable:
                continue
            segment_end = image.runtime_address(segment.link_address + segment.memory_size)
            page_end = (segment_end + procfs.PAGE_SIZE - 1) & ~(procfs.PAGE_SIZE - 1)
            start = (segment_end + 15) & ~15
            if page_end - start < GADGET_SIZE:
                continue
            covering = [m for m in image.mappings if m.start <= start and page_end <= m.end and m.executable]
            if covering:
                return Scratch(start, GADGET_SIZE, process.read(start, GADGET_SIZE))
    raise TargetError(f"no room for the injection gadget in the executable segments of process {process.pid}")


class InjectedSyscallError(TargetError):
    """An injected system call returned an error; `errno` says which."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class Injector:
    """Runs raw system calls at one thread held stopped by a StoppedThreads.

    A target under a seccomp filter is refused unless `allow_seccomp`: the filter cannot be
    evaluated from outside and may kill the process for a system call it does not expect.
    """

    def __init__(
        self,
        stopped: StoppedThreads,
        tid: int | None = None,
        scratch: Scratch | None = None,
        timeout: float = 5.0,
        allow_seccomp: bool = False,
    ) -> None:
        self.stopped = stopped
        self.process = stopped.process
        self.tid = tid if tid is not None else stopped.tids[0]
        if self.tid not in stopped.held:
            raise TargetError(f"thread {self.tid} is not stopped")
        self.timeout = timeout
        self._in_flight = False
        seccomp = procfs.thread_status(self.process.pid, self.tid).get("Seccomp", "0").strip()
        if seccomp == "2" and not allow_seccomp:
            # A filter may answer an unexpected mmap or memfd_create with SECCOMP_RET_KILL_PROCESS.
            raise RefusedError(
                f"process {self.process.pid} is under a seccomp filter: an injected system call could kill it"
            )
        self.scratch = scratch or find_scratch(self.process)
        self._gadget = assemble_gadget(self.scratch.address)
        self.process.write(self.scratch.address, self._gadget)

    def close(self) -> None:
        """Put the scratch bytes back, unless a failed injection may still need the gadget."""
        if not self._in_flight:
            self.process.write(self.scratch.address, self.scratch.pre_image)

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one primitive ----------------------------------------------------------------------

    def syscall(self, nr: int, *args: int) -> int:
        """Execute system call `nr` with up to six arguments at the thread; the signed raw result."""
        if self._in_flight:
            # The thread still runs an earlier, failed injection through the gadget: injecting again
            # would overwrite its save area. Left alone, it restores itself.
            raise TargetError(
                f"thread {self.tid} of process {self.process.pid} is still finishing an interrupted injected"
                " system call; it restores itself"
            )
        tid = self.tid
        gadget = self.scratch.address
        deadline = time.monotonic() + self.timeout
        raw = pt.get_regs(tid)
        # 1. The save area first: from now on a dead loader leaves a thread that restores itself.
        self.process.write(gadget + CODE_SIZE, save_area_bytes(resume_registers(raw)))
        full = (list(args) + [0] * 6)[:6]
        call = dataclasses.replace(
            raw,
            rip=gadget,
            rax=nr,
            rdi=full[0] & 0xFFFFFFFFFFFFFFFF,
            rsi=full[1] & 0xFFFFFFFFFFFFFFFF,
            rdx=full[2] & 0xFFFFFFFFFFFFFFFF,
            r10=full[3] & 0xFFFFFFFFFFFFFFFF,
            r8=full[4] & 0xFFFFFFFFFFFFFFFF,
            r9=full[5] & 0xFFFFFFFFFFFFFFFF,
            orig_rax=0xFFFFFFFFFFFFFFFF,  # -1: not in a syscall, so the kernel restarts nothing on resume
        )
        # 2. Point the thread at the gadget and run it up to the exit of our syscall. From here until
        #    step 3 completes, a failure (or our death) leaves the thread to the gadget, which restores
        #    it: so the registers are not journaled for release, and close() keeps the gadget bytes.
        self._in_flight = True
        pt.set_regs(tid, call)
        self.stopped.held.pop(tid, None)
        result = self._run_to_exit(tid, gadget + SYSCALL_INSN_SIZE, nr, deadline)
        # 3. Interrupt first, then hand back the raw registers: resuming from the syscall-exit stop
        #    reaches the interrupt stop in get_signal(), where the kernel's own restart logic applies.
        #    Should the loader die in between, the pending interrupt's TIF_SIGPENDING still routes the
        #    thread through that same restart logic.
        pt.interrupt(tid)
        pt.set_regs(tid, raw)
        pt.cont(tid)
        self._wait_interrupt(tid, deadline)
        self._in_flight = False
        return result

    def _run_to_exit(self, tid: int, after_syscall: int, nr: int, deadline: float) -> int:
        """Resume with PTRACE_SYSCALL until the exit stop of our call at the gadget; its result."""
        entered = False
        pt.syscall(tid)
        while True:
            status = wait_one(tid, deadline)
            sig = 0
            if status.kind == StopKind.EXITED:
                self.stopped.mark_gone(tid)
                raise TargetError(f"thread {tid} exited during an injected system call")
            if status.kind == StopKind.SYSCALL:
                info = pt.get_syscall_info(tid)
                if info.instruction_pointer == after_syscall:
                    if info.op == pt.PTRACE_SYSCALL_INFO_ENTRY and info.nr == nr:
                        entered = True
                    elif info.op == pt.PTRACE_SYSCALL_INFO_EXIT and entered:
                        return info.return_value
                # Otherwise a syscall of a signal handler that ran first: let it pass.
            elif status.kind == StopKind.SIGNAL:
                sig = status.signal  # pass the signal on; its handler returns to the gadget
                self.stopped.redelivered.append((tid, sig))
            pt.syscall(tid, sig)

    def _wait_interrupt(self, tid: int, deadline: float) -> None:
        """Wait for the interrupt stop that ends an injection, passing signals on."""
        while True:
            status = wait_one(tid, deadline)
            if status.kind == StopKind.EXITED:
                self.stopped.mark_gone(tid)
                raise TargetError(f"thread {tid} exited during an injected system call")
            if status.kind in (StopKind.INTERRUPT, StopKind.GROUP_STOP):
                self.stopped.held[tid] = status.kind
                return
            sig = status.signal if status.kind == StopKind.SIGNAL else 0
            if sig:
                self.stopped.redelivered.append((tid, sig))
            pt.interrupt(tid)  # that stop consumed our interrupt: renew it
            pt.cont(tid, sig)

    # -- typed helpers --------------------------------------------------------------------------

    def _checked(self, what: str, result: int) -> int:
        if -4096 < result < 0:
            name = errno_names.errorcode.get(-result, str(-result))
            raise InjectedSyscallError(f"{what} in process {self.process.pid} failed: {name}", -result)
        return result

    def write_name(self, name: str) -> int:
        """Place a NUL-terminated string in the gadget's name area; its runtime address."""
        data = name.encode() + b"\0"
        if len(data) > NAME_SIZE:
            raise ValueError(f"name too long for the injection area: {name!r}")
        address = self.scratch.address + CODE_SIZE + SAVE_SIZE
        self.process.write(address, data)
        return address

    def getpid(self) -> int:
        """The target's pid, as seen by the target (a harmless call for tests and probes)."""
        return self.syscall(SYS_GETPID)

    def mmap(self, address: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
        """mmap(2) in the target; the mapped address."""
        return self._checked("mmap", self.syscall(SYS_MMAP, address, length, prot, flags, fd, offset))

    def mprotect(self, address: int, length: int, prot: int) -> None:
        """mprotect(2) in the target."""
        self._checked("mprotect", self.syscall(SYS_MPROTECT, address, length, prot))

    def munmap(self, address: int, length: int) -> None:
        """munmap(2) in the target."""
        self._checked("munmap", self.syscall(SYS_MUNMAP, address, length))

    def close_fd(self, fd: int) -> None:
        """close(2) a descriptor of the target."""
        self._checked("close", self.syscall(SYS_CLOSE, fd))

    def ftruncate(self, fd: int, length: int) -> None:
        """ftruncate(2) a descriptor of the target."""
        self._checked("ftruncate", self.syscall(SYS_FTRUNCATE, fd, length))

    def memfd_create(self, name: str) -> int:
        """memfd_create(2) in the target, so mappings of it show `/memfd:<name>` in its maps."""
        address = self.write_name(name)
        result = self.syscall(SYS_MEMFD_CREATE, address, MFD_CLOEXEC | MFD_EXEC)
        if result == -errno_names.EINVAL:  # kernels before 6.3 do not know MFD_EXEC
            result = self.syscall(SYS_MEMFD_CREATE, address, MFD_CLOEXEC)
        return self._checked("memfd_create", result)
