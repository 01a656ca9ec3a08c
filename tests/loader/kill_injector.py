"""A loader that gets SIGKILLed mid-injection, driven by the SIGKILL tests.

`python kill_injector.py PID each-call`: for k = 1, 2, … fork a child that stops the target's main
thread, injects mmap + munmap, and SIGKILLs itself right after its k-th ptrace request. After each
kill print "killed k" and wait for a line on stdin (the test checks the target meanwhile); once a
child gets through without reaching k, print "complete N" (N ptrace requests per injection).

`python kill_injector.py PID TID loop`: inject at that thread without end, printing "injecting"
once; the test kills this process from outside at an arbitrary moment.
"""

from __future__ import annotations

import os
import signal
import sys

from hpkg.loader import inject
from hpkg.loader import ptrace as pt
from hpkg.loader.process import Process


def inject_once(process: Process, tid: int) -> None:
    with process.stop_thread(tid) as stopped, inject.Injector(stopped) as injector:
        address = injector.mmap(0, 4096, inject.PROT_READ, inject.MAP_PRIVATE | inject.MAP_ANONYMOUS)
        injector.munmap(address, 4096)


def kill_after_call(k: int) -> None:
    """Make this process SIGKILL itself right after its k-th ptrace request returns."""
    real_ptrace = pt._ptrace
    calls = 0

    def counting_ptrace(*args: object) -> int:
        nonlocal calls
        result = real_ptrace(*args)  # type: ignore[arg-type]
        calls += 1
        if calls == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    pt._ptrace = counting_ptrace  # type: ignore[assignment]


def each_call(pid: int) -> None:
    k = 0
    while True:
        k += 1
        child = os.fork()
        if child == 0:
            kill_after_call(k)
            inject_once(Process(pid), pid)
            os._exit(0)
        _, status = os.waitpid(child, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            print(f"complete {k - 1}", flush=True)
            return
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        print(f"killed {k}", flush=True)
        sys.stdin.readline()


def loop(pid: int, tid: int) -> None:
    process = Process(pid)
    inject_once(process, tid)
    print("injecting", flush=True)
    while True:
        inject_once(process, tid)


if __name__ == "__main__":
    if sys.argv[2] == "each-call":
        each_call(int(sys.argv[1]))
    else:
        loop(int(sys.argv[1]), int(sys.argv[2]))
