"""Run one CLI invocation in a forked child of this (already importing) process, within limits.

The parent imports hpkg, LIEF and every command module once (`preload`); each input then costs a
fork, not an interpreter start. The child points its stdout and stderr at files, sets RLIMIT_AS
and RLIMIT_CPU, runs `hpkg.cli.main(argv)` in-process and leaves with the CLI's exit code; the parent
waits on a pidfd until a wall-clock deadline, then kills it. An exception that escapes `main` (the
child sets HPKG_DEBUG=1, so the CLI re-raises instead of printing "internal error") is written as a
traceback to a third file, which names the crash site.
"""

from __future__ import annotations

import importlib
import os
import resource
import select
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from hpkg.cli import COMMAND_MODULES


@dataclass(frozen=True)
class Limits:
    """What one input may use: address space on top of the parent's, CPU seconds, wall seconds."""

    extra_address_space: int = 2 << 30
    cpu_seconds: int = 30
    wall_seconds: float = 60.0


@dataclass(frozen=True)
class RawOutcome:
    """What the child did: exit code or signal, its output, its resources."""

    exit_code: int | None  # None when a signal ended it
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    trace: str  # the traceback of an exception that escaped main, else ""
    seconds: float  # wall clock
    max_rss_kib: int  # the child's peak resident set (it starts with the parent's shared pages)


def preload() -> None:
    """Import every command and what it loads (the diff engine, LIEF, the loader) before forking."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"hpkg.cli.{name}")
    for name in ("hpkg.builder.diff", "hpkg.builder.build", "hpkg.loader.file_apply", "lief"):
        importlib.import_module(name)


def _address_space_now() -> int:
    """The parent's virtual size (VmSize), which the child inherits before it does anything."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(argv: list[str], workdir: Path, limits: Limits) -> None:
    """In the forked child: limits, redirections, the CLI; never returns."""
    code = 1
    try:
        address_space = _address_space_now() + limits.extra_address_space
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(workdir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.environ["HPKG_DEBUG"] = "1"
        os.chdir(workdir)
        for number in (signal.SIGINT, signal.SIGTERM):  # the parent's handlers are not the CLI's
            signal.signal(number, signal.SIG_DFL)
        from hpkg.cli import main

        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the crash itself is what the parent wants to see
        (workdir / "trace").write_text(traceback.format_exc())
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def run_cli(argv: list[str], workdir: Path, limits: Limits) -> RawOutcome:
    """Fork, run `hpkg ARGV` in the child within `limits`, and report what happened."""
    (workdir / "trace").unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(argv, workdir, limits)
    pidfd = os.pidfd_open(pid)
    timed_out = True
    try:
        ready, _, _ = select.select([pidfd], [], [], limits.wall_seconds)
        timed_out = not ready
    finally:
        if timed_out:  # past the deadline, or the parent itself is being stopped: no orphan is left
            os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        os.close(pidfd)
    seconds = time.monotonic() - started
    return RawOutcome(
        exit_code=os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        timed_out=timed_out,
        stdout=_read(workdir / "stdout"),
        stderr=_read(workdir / "stderr"),
        trace=_read(workdir / "trace"),
        seconds=seconds,
        max_rss_kib=usage.ru_maxrss,
    )
