"""Injected raw system calls: mmap, mprotect, munmap, memfd; the target carries on as before."""

from __future__ import annotations

import os
import signal
import time

import pytest

from hpkg.errors import RefusedError, TargetError
from hpkg.loader import inject
from hpkg.loader.inject import Injector
from hpkg.loader.process import Process


def mapping_at(process: Process, address: int):
    return next((m for m in process.maps() if m.start == address), None)


def test_memfd_mmap_mprotect_munmap_in_a_blocked_reader(start_target):
    target = start_target("single", "read")
    process = Process(target.pid)
    with process.stop_thread() as stopped:
        before = stopped.regs(target.pid)
        with Injector(stopped) as injector:
            scratch = injector.scratch
            assert injector.getpid() == target.pid
            fd = injector.memfd_create("hpkg-test1")
            injector.ftruncate(fd, 8192)
            address = injector.mmap(0, 8192, inject.PROT_READ | inject.PROT_WRITE, inject.MAP_PRIVATE, fd)
            injector.close_fd(fd)
            mapping = mapping_at(process, address)
            assert mapping is not None
            assert mapping.path == "/memfd:hpkg-test1 (deleted)"
            assert mapping.perms == "rw-p" and mapping.size == 8192
            process.write(address, b"hello from the loader")
            assert process.read(address, 21) == b"hello from the loader"
            injector.mprotect(address, 4096, inject.PROT_READ | inject.PROT_EXEC)
            assert mapping_at(process, address).perms == "r-xp"
            assert mapping_at(process, address + 4096).perms == "rw-p"
        # The thread is back exactly as it was, and the gadget bytes are gone.
        assert stopped.regs(target.pid) == before
        assert process.read(scratch.address, scratch.size) == scratch.pre_image
    target.assert_running_untraced()
    assert mapping_at(process, address) is not None
    # The read() interrupted by the stop is restarted and gets data written afterwards.
    target.send("after injection\n")
    target.wait_for(lambda line: line == "got after injection")
    with process.stop_thread() as stopped, Injector(stopped) as injector:
        injector.munmap(address, 8192)
    assert mapping_at(process, address) is None and mapping_at(process, address + 4096) is None
    target.send("after munmap\n")
    target.wait_for(lambda line: line == "got after munmap")


def test_sleeping_loop_keeps_counting_after_many_injections(start_target):
    target = start_target("single", "loop")
    process = Process(target.pid)
    for _ in range(30):
        with process.stop_thread() as stopped, Injector(stopped) as injector:
            address = injector.mmap(0, 4096, inject.PROT_READ, inject.MAP_PRIVATE | inject.MAP_ANONYMOUS)
            injector.munmap(address, 4096)
    target.assert_running_untraced()
    ticks = target.ticks_after(target.mark(), 4)
    numbers = [int(m.group(1)) for m in ticks]
    assert numbers == list(range(numbers[0], numbers[0] + 4))
    assert {m.group(2) for m in ticks} == {"1"}


def test_injection_at_each_thread_of_a_multithreaded_process(start_target):
    target = start_target("threads")
    process = Process(target.pid)
    with process.stop_all_threads() as stopped:
        for tid in stopped.tids:
            with Injector(stopped, tid) as injector:
                before = stopped.regs(tid)
                address = injector.mmap(0, 4096, inject.PROT_READ, inject.MAP_PRIVATE | inject.MAP_ANONYMOUS)
                assert mapping_at(process, address) is not None
                injector.munmap(address, 4096)
                assert stopped.regs(tid) == before
        mark = target.mark()
    target.assert_running_untraced()
    target.ticks_after(mark)
    target.send("line\n")
    target.wait_for(lambda line: line == "main got line", mark)
    target.wait_for(lambda line: line == "reader got line", mark)


def test_failed_syscall_reports_errno_and_leaves_the_thread_intact(start_target):
    target = start_target("single", "read")
    process = Process(target.pid)
    with process.stop_thread() as stopped, Injector(stopped) as injector:
        try:
            injector.mprotect(1, 4096, inject.PROT_READ)  # unaligned: EINVAL
        except inject.InjectedSyscallError as exc:
            assert exc.errno == 22
            assert "mprotect" in str(exc) and "EINVAL" in str(exc)
        else:
            raise AssertionError("mprotect of an unaligned address succeeded")
    target.assert_running_untraced()
    target.send("ok\n")
    target.wait_for(lambda line: line == "got ok")


def test_restart_registers_follow_the_kernel_rules():
    from hpkg.loader.ptrace import Registers

    zero = dict.fromkeys(Registers.__dataclass_fields__, 0)
    in_read = Registers(**{**zero, "rip": 0x1002, "orig_rax": 0, "rax": (1 << 64) - 512})
    restarted = inject.resume_registers(in_read)
    assert (restarted.rip, restarted.rax) == (0x1000, 0)
    in_sleep = Registers(**{**zero, "rip": 0x2002, "orig_rax": 230, "rax": (1 << 64) - 516})
    restarted = inject.resume_registers(in_sleep)
    assert (restarted.rip, restarted.rax) == (0x2000, inject.SYS_RESTART_SYSCALL)
    done = Registers(**{**zero, "rip": 0x3002, "orig_rax": 0, "rax": 5})
    assert inject.resume_registers(done) == done
    user = Registers(**{**zero, "rip": 0x4000, "orig_rax": (1 << 64) - 1, "rax": (1 << 64) - 512})
    assert inject.resume_registers(user) == user


def test_target_under_a_seccomp_filter_is_refused_unless_allowed(start_target):
    target = start_target("single", "seccomp")
    process = Process(target.pid)
    with pytest.raises(RefusedError, match="under a seccomp filter"), process.stop_thread() as stopped:
        Injector(stopped)
    target.assert_running_untraced()
    # This filter allows everything, so a caller that knows it may inject.
    with process.stop_thread() as stopped, Injector(stopped, allow_seccomp=True) as injector:
        assert injector.getpid() == target.pid
    target.send("filtered\n")
    target.wait_for(lambda line: line == "got filtered")


def blocked_reader_with_buffer(start_target):
    """A target blocked in read(0, …), and a page of its memory to inject a read() into."""
    target = start_target("single", "read")
    target.wait_blocked_in(0)
    process = Process(target.pid)
    with process.stop_thread() as stopped, Injector(stopped) as injector:
        rw, private = inject.PROT_READ | inject.PROT_WRITE, inject.MAP_PRIVATE | inject.MAP_ANONYMOUS
        buffer = injector.mmap(0, 4096, rw, private)
    return target, process, buffer


def test_injection_that_times_out_leaves_the_thread_to_the_gadget(start_target):
    target, process, buffer = blocked_reader_with_buffer(start_target)
    with pytest.raises(TargetError, match="did not stop in time"), process.stop_thread() as stopped:
        injector = Injector(stopped, timeout=0.2)
        scratch = injector.scratch
        with injector:
            injector.syscall(0, 0, buffer, 4096)  # read(0, buffer, 4096): blocks, no input yet
    # Released anyway: running, untraced, and the gadget stays in place for the blocked thread.
    target.assert_running_untraced()
    gadget = inject.assemble_gadget(scratch.address)
    assert process.read(scratch.address, len(gadget)) == gadget
    assert_pending_read_then_restored(target, process, buffer)


def assert_pending_read_then_restored(target, process: Process, buffer: int) -> None:
    """The injected read() still pending (restarted by the kernel) takes the next line; then the
    gadget restores the thread, whose own read() takes the line after: it came through intact."""
    target.send("swallowed\n")
    deadline = time.monotonic() + 20
    while process.read(buffer, 10) != b"swallowed\n" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.read(buffer, 10) == b"swallowed\n"
    target.send("echoed\n")
    target.wait_for(lambda line: line == "got echoed")
    assert "got swallowed" not in target.lines


def test_injection_into_a_job_control_stopped_process_keeps_it_stopped(start_target):
    target = start_target("single", "read")
    target.wait_blocked_in(0)
    os.kill(target.pid, signal.SIGSTOP)
    while target.status()["State"][:1] != "T":
        time.sleep(0.005)
    process = Process(target.pid)
    with process.stop_thread() as stopped, Injector(stopped) as injector:
        address = injector.mmap(0, 4096, inject.PROT_READ, inject.MAP_PRIVATE | inject.MAP_ANONYMOUS)
    assert mapping_at(process, address) is not None
    time.sleep(0.05)
    assert target.status()["State"][:1] == "T" and target.status()["TracerPid"] == "0"
    os.kill(target.pid, signal.SIGCONT)
    target.send("continued\n")
    target.wait_for(lambda line: line == "got continued")
    target.assert_running_untraced()
