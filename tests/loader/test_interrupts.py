"""Ctrl-C while the loader holds a thread: taken after the hold, never in the middle of an injection."""

from __future__ import annotations

import subprocess
import sys

import pytest
from terminal_signals import sigint_as_at_a_terminal, sigint_ignored
from test_inject import assert_pending_read_then_restored, blocked_reader_with_buffer

from hpkg.errors import TargetError
from hpkg.loader.inject import Injector

# Run in a fresh interpreter: SIGINT goes to that process's main thread, never to the test runner.
_HOLD_AND_INTERRUPT = """
import os, signal, sys
from hpkg.loader import inject
from hpkg.loader.inject import Injector
from hpkg.loader.process import Process

process = Process(int(sys.argv[1]))
try:
    with process.stop_thread() as held, Injector(held) as injector:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the thread is held
        private = inject.MAP_PRIVATE | inject.MAP_ANONYMOUS
        for _ in range(20):  # injections go on: none of them is cut in half
            injector.munmap(injector.mmap(0, 4096, inject.PROT_READ, private), 4096)
        print("hold finished", flush=True)
except KeyboardInterrupt:
    print("interrupted after the release", flush=True)
"""


def test_ctrl_c_during_a_hold_is_raised_after_the_release(start_target):
    target = start_target("single", "read")
    target.wait_blocked_in(0)
    argv = [sys.executable, "-c", _HOLD_AND_INTERRUPT, str(target.pid)]
    at_a_terminal = sigint_as_at_a_terminal
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, preexec_fn=at_a_terminal)
    assert done.stdout.splitlines() == ["hold finished", "interrupted after the release"], done.stderr
    target.assert_running_untraced()
    target.send("still here\n")
    target.wait_for(lambda line: line == "got still here")


def test_an_ignored_ctrl_c_stays_ignored_through_a_hold(start_target):
    """A background job of a non-interactive shell has SIGINT ignored: nothing is recorded or raised."""
    target = start_target("single", "read")
    target.wait_blocked_in(0)
    argv = [sys.executable, "-c", _HOLD_AND_INTERRUPT, str(target.pid)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, preexec_fn=sigint_ignored)
    assert (done.returncode, done.stdout.splitlines()) == (0, ["hold finished"]), done.stderr
    target.assert_running_untraced()
    target.send("still here\n")
    target.wait_for(lambda line: line == "got still here")


def test_a_thread_still_running_an_injection_is_never_injected_again(start_target):
    target, process, buffer = blocked_reader_with_buffer(start_target)
    with process.stop_thread() as stopped, Injector(stopped, timeout=0.2) as injector:
        with pytest.raises(TargetError, match="did not stop in time"):
            injector.syscall(0, 0, buffer, 4096)  # read(0, buffer, 4096): blocks, no input yet
        # The clean-up a caller would try next (close a descriptor, free memory) is refused: the
        # thread is still inside the gadget, whose save area must not be overwritten.
        with pytest.raises(TargetError, match="still finishing an interrupted injected system call"):
            injector.close_fd(100)
    target.assert_running_untraced()
    assert_pending_read_then_restored(target, process, buffer)
