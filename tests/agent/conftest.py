"""Fixtures for the store and the agent: a private store per test, `hpkg agent` run as a real subprocess
whose log lines a test waits on, and a host that dlopen()s the library sample late.

The samples, packages and host directories are tests/machine's (imported below): the baselines carry
build-ids of their own, so that an agent started here, which patches every matching process of the
machine, meets only the processes these tests start, never another test session's.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_MACHINE_CONFTEST = Path(__file__).resolve().parents[1] / "machine" / "conftest.py"
_spec = importlib.util.spec_from_file_location("machine_fixtures", _MACHINE_CONFTEST)
assert _spec is not None and _spec.loader is not None
_machine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_machine)

# The machine-wide tests' fixtures, shared (pytest finds fixtures by name in a conftest's namespace).
own_samples = _machine.own_samples
host_dirs = _machine.host_dirs
public_key = _machine.public_key
packages = _machine.packages
start = _machine.start
unrelated = _machine.unrelated
lingering = _machine.lingering
READY_FLAGS = _machine.READY_FLAGS

from live_helpers import hpkg  # noqa: E402

from hpkg.loader.agent_log import parse_line  # noqa: E402

PROGRAMS = Path(__file__).parent / "programs"
WAIT = 60.0  # a deadline for a line that must come, never a timing assertion


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty private store for this test, named by HPKG_STORE for every `hpkg` the test runs."""
    path = tmp_path / "store"
    monkeypatch.setenv("HPKG_STORE", str(path))
    return path


def install(path: Path, *options: str | Path) -> dict:
    """`hpkg install PATH … --json`, which must succeed."""
    run = hpkg("install", path, *options, "--json")
    assert run.returncode == 0, run.stderr
    return run.json()


@dataclass(frozen=True)
class Line:
    """One line of the agent's log."""

    priority: int
    event: str
    fields: dict[str, str]
    text: str


class AgentProcess:
    """`hpkg agent` running in a subprocess; its log lines are collected as they come."""

    def __init__(self, *options: str) -> None:
        argv = [sys.executable, "-m", "hpkg", "agent", "--rescan", "1", *options]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[Line] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for text in self.process.stdout:
            priority, event, fields = parse_line(text)
            with self._changed:
                self.lines.append(Line(priority, event, fields, text.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, event: str, after: int = 0, **fields: object) -> Line:
        """The first line from index `after` on with this event and these field values; fails after WAIT."""
        want = {key: str(value) for key, value in fields.items()}
        deadline = time.monotonic() + WAIT
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if line.event == event and all(line.fields.get(k) == v for k, v in want.items()):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None and not self._reader.is_alive():
                    log = "\n".join(line.text for line in self.lines)
                    stderr = self.process.stderr.read() if self.process.poll() is not None else ""
                    raise AssertionError(f"no {event} {want} from the agent; its log:\n{log}\n{stderr}")
                self._changed.wait(min(left, 1.0))

    def events(self, event: str, after: int = 0) -> list[Line]:
        with self._changed:
            return [line for line in self.lines[after:] if line.event == event]

    def mark(self) -> int:
        """The number of lines so far: pass it as `after` to wait for what comes next."""
        with self._changed:
            return len(self.lines)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum` and wait for the agent to end; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=WAIT)
        finally:
            self._reader.join(timeout=WAIT)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def run_agent(store: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start `hpkg agent` on the test's store (it has announced `started` when this returns); every agent
    started is stopped when the test ends."""
    started: list[AgentProcess] = []

    def launch(*options: str) -> AgentProcess:
        agent = AgentProcess(*options)
        started.append(agent)
        agent.wait_for("started")
        return agent

    yield launch
    for agent in started:
        agent.stop()


@pytest.fixture(scope="session")
def dlopen_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/agent/programs/dlopen_host.c, compiled with the ready flags."""
    path = tmp_path_factory.mktemp("dlopen-host") / "dlopen_host"
    cmd = ["gcc", *READY_FLAGS, "-o", str(path), str(PROGRAMS / "dlopen_host.c"), "-ldl"]
    subprocess.run(cmd, check=True, capture_output=True)
    return path
