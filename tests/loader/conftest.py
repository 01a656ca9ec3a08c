"""Fixtures for the loader tests: C targets compiled once per session, started and watched live."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).parent / "programs"
WAIT = 20.0  # generous: a condition that must come true, never a timing assertion


@dataclass(frozen=True)
class Binary:
    """A compiled test program and its function symbols (link address, size) from nm."""

    path: Path
    symbols: dict[str, tuple[int, int]]

    def symbol(self, name: str) -> tuple[int, int]:
        return self.symbols[name]


def _nm(path: Path) -> dict[str, tuple[int, int]]:
    cmd = ["nm", "-S", "--defined-only", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    symbols = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            symbols[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return symbols


def _compile(source: str, out: Path, *flags: str) -> Binary:
    cmd = ["gcc", "-O2", "-g", "-Wall", "-Wl,--build-id=sha1", *flags, "-o", str(out), str(PROGRAMS / source)]
    subprocess.run(cmd, check=True, capture_output=True)
    return Binary(out, _nm(out))


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Binary]:
    """single (PIE), single-nopie (non-PIE), threads and deep-spinners, each compiled once."""
    out = tmp_path_factory.mktemp("loader-programs")
    return {
        "single": _compile("single.c", out / "single"),
        "single-nopie": _compile("single.c", out / "single-nopie", "-no-pie", "-fno-pie"),
        "threads": _compile("threads.c", out / "threads", "-pthread"),
        "deep-spinners": _compile("deep_spinners.c", out / "deep-spinners", "-pthread"),
    }


class Target:
    """A running test program: its stdin, a thread collecting its stdout lines, and /proc views."""

    def __init__(self, binary: Binary, *args: str, executable: Path | None = None) -> None:
        self.binary = binary
        self.popen = subprocess.Popen(
            [str(executable or binary.path), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid = self.popen.pid
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        self.wait_for(lambda line: line.startswith("ready"))

    def _collect(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], start: int = 0) -> str:
        """The first output line from index `start` on that satisfies `predicate` (waits for it)."""
        deadline = time.monotonic() + WAIT
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = self.lines[-5:]
                    raise AssertionError(f"target {self.pid} never printed the expected line; last: {last}")
                self._cond.wait(remaining)

    def mark(self) -> int:
        """An index into the output: lines after it were printed later."""
        with self._cond:
            return len(self.lines)

    def ticks_after(self, start: int, count: int = 3) -> list[re.Match[str]]:
        """Wait for `count` new "tick" lines after index `start`, parsed."""
        found: list[re.Match[str]] = []
        pattern = re.compile(r"tick (\d+) answer (\d+)(?: usr1 (\d+))?")
        while len(found) < count:
            line = self.wait_for(lambda text: pattern.match(text) is not None, start)
            found.append(pattern.match(line))  # type: ignore[arg-type]
            with self._cond:
                start = self.lines.index(line, start) + 1
        return found

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text)
        self.popen.stdin.flush()

    def status(self, tid: int | None = None) -> dict[str, str]:
        path = f"/proc/{self.pid}/task/{tid or self.pid}/status"
        with open(path, encoding="utf-8") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)

    def tids(self) -> list[int]:
        return sorted(int(t) for t in os.listdir(f"/proc/{self.pid}/task"))

    def tid_named(self, comm: str) -> list[int]:
        """Threads whose name (comm) is `comm`."""
        found = []
        for tid in self.tids():
            with open(f"/proc/{self.pid}/task/{tid}/comm", encoding="utf-8") as f:
                if f.read().strip() == comm:
                    found.append(tid)
        return found

    def wait_blocked_in(self, syscall_nr: int, tid: int | None = None) -> None:
        """Wait until a thread sleeps inside system call `syscall_nr` (/proc/PID/task/TID/syscall)."""
        deadline = time.monotonic() + WAIT
        path = f"/proc/{self.pid}/task/{tid or self.pid}/syscall"
        while True:
            with open(path, encoding="ascii") as f:
                fields = f.read().split()
            if fields[:1] == [str(syscall_nr)] and self.status(tid)["State"][:1] == "S":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"thread {tid or self.pid} never blocked in syscall {syscall_nr}")
            time.sleep(0.005)

    def states(self) -> dict[int, str]:
        """State letter of every thread (threads that vanish while reading are skipped)."""
        states = {}
        for tid in self.tids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, KeyError):
                states[tid] = self.status(tid)["State"][:1]
        return states

    def tracers(self) -> dict[int, int]:
        tracers = {}
        for tid in self.tids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, KeyError):
                tracers[tid] = int(self.status(tid)["TracerPid"])
        return tracers

    def assert_running_untraced(self) -> None:
        """Alive, no thread stopped (t or T), no thread traced."""
        assert self.popen.poll() is None, f"target exited with {self.popen.returncode}"
        states = self.states()
        assert not {tid: s for tid, s in states.items() if s in "tTZX"}, states
        assert set(self.tracers().values()) == {0}

    def runtime_address(self, image_bias: int, name: str) -> int:
        return image_bias + self.binary.symbol(name)[0]

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait()


@pytest.fixture
def start_target(binaries: dict[str, Binary]) -> Iterator[Callable[..., Target]]:
    """Start test programs by name; every one is killed at teardown."""
    started: list[Target] = []

    def start(name: str, *args: str, executable: Path | None = None) -> Target:
        target = Target(binaries[name], *args, executable=executable)
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


@pytest.fixture(scope="session")
def helper_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The window's C helper compiled from its source now, as `make` does (whatever the tree holds)."""
    from hpkg.loader import window_native

    library = tmp_path_factory.mktemp("helper") / "window_helper.so"
    command = ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", str(library)]
    subprocess.run([*command, str(window_native.SOURCE)], check=True, capture_output=True)
    return library


@pytest.fixture(scope="session")
def built_helper(helper_library: Path):
    """The loaded helper (window_native.WindowHelper)."""
    from hpkg.loader import window_native

    helper = window_native.load(helper_library)
    assert helper is not None
    return helper
