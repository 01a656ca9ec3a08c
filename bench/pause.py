"""Pause vs restart: how long a live apply stops a server, beside what restarting it costs.

Beside each pause, its floor: every thread stopped and resumed with no work in between, measured on the
same process just before each apply and revert (bench/pause_curve.py has the curve over thread counts).

For each server, under a continuous request stream (bench/stream.py), the rounds take turns:
- live: `apply_to_process` (its pause: every thread stopped for the safety check and the switch),
  some requests answered by the fix, then `revert_process` (its pause);
- restart: SIGTERM, wait for the exit, start the same binary, read its "listening on PORT" line, and
  ask until it answers: the time from SIGTERM to that first answer.
Requests that failed during each (from the operation's start until every client has an answer
again) are counted beside it: a restart drops every open connection, a live patch should drop none.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench import engine
from bench.stream import RequestStream, StreamError, Tally, ask

if TYPE_CHECKING:  # the package model is only needed for hints; the loader is imported where it is used
    from hpkg.formats.model import Package

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples"
STREAM_SERVER_SOURCE = REPO_ROOT / "tests" / "live" / "programs" / "stream_server.c"
# The hotpatch-ready build of samples/Makefile (READY_CFLAGS, READY_LDFLAGS), as tests/live compiles.
READY_FLAGS = (
    "-O2", "-g", "-fno-omit-frame-pointer", "-flive-patching=inline-clone", "-fcf-protection=none",
    "-Wall", "-Wl,--emit-relocs", "-Wl,--build-id=sha1", "-pthread",
)  # fmt: skip
READY_LINE = re.compile(r"^listening on (\d+)$")
CLIENTS = 4
ANSWERS_WHILE_PATCHED = 40  # requests the fix must answer before the revert starts
APPLY_TIMEOUT_SECONDS = 10.0
# A safety net against a server that never starts, not a timing assertion.
START_DEADLINE_SECONDS = 30.0


class PauseError(Exception):
    """A server could not be built, started or patched; the bench reports the reason instead of figures."""


@dataclass(frozen=True)
class Server:
    """A line server in two builds, and how to start it on a port (0: any free port)."""

    name: str
    baseline: Path
    fixed: Path
    argv: Callable[[Path, int], list[str]]
    source: str  # where it comes from, for the report


@dataclass(frozen=True)
class Summary:
    """Median and maximum of one measured quantity over the rounds."""

    median: float
    maximum: float
    samples: tuple[float, ...]

    @staticmethod
    def of(samples: list[float]) -> Summary:
        return Summary(statistics.median(samples), max(samples), tuple(samples))


@dataclass(frozen=True)
class PauseResult:
    """One server's figures; `error` instead of figures when it could not be measured."""

    name: str
    source: str
    rounds: int = 0
    threads: int = 0
    clients: int = CLIENTS
    apply_pause_ms: Summary | None = None
    revert_pause_ms: Summary | None = None
    floor_ms: Summary | None = None  # every thread stopped and resumed with no work, before each switch
    apply_wall_ms: Summary | None = None  # apply_to_process from call to return, the process running
    restart_ms: Summary | None = None  # SIGTERM to the first answer of the new process
    live_failed: tuple[int, ...] = ()  # per round, apply through revert
    restart_failed: tuple[int, ...] = ()  # per round, SIGTERM until every client is answered again
    live_wrong: int = 0
    fixed_answers_while_patched: tuple[int, ...] = ()
    requests_answered: int = 0
    counter_after_restart: tuple[int, ...] = ()  # the server's request number (#N) a restart starts from
    counter_kept_live: tuple[bool, ...] = ()  # per live round: the request count went on across it
    error: str | None = None


def threaded_sample() -> Server:
    """samples/14-threaded-server, hotpatch-ready flavour, built by its make rule."""
    name = "14-threaded-server"
    done = subprocess.run(["make", "-s", "-C", str(SAMPLES_DIR), name], capture_output=True, text=True)
    if done.returncode != 0:
        raise PauseError(f"make -C samples {name} failed: {done.stderr.strip()[-200:]}")
    out = SAMPLES_DIR / name / "out"
    return Server(
        name, out / "baseline", out / "fixed", lambda path, port: [str(path), str(port)], f"samples/{name}"
    )


def stream_server(workdir: Path) -> Server:
    """tests/live/programs/stream_server.c (16 workers) built as baseline and -DFIX with the ready flags."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for build, defines in (("baseline", ()), ("fixed", ("-DFIX",))):
        path = workdir / f"stream_server.{build}"
        command = ["gcc", *READY_FLAGS, *defines, "-o", str(path), str(STREAM_SERVER_SOURCE)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise PauseError(f"gcc failed for stream_server ({build}): {done.stderr.strip()[-200:]}")
        paths.append(path)
    # It always binds a free port: a restart moves it, and the clients follow the new ready line.
    return Server("stream_server (16 workers)", paths[0], paths[1], lambda path, port: [str(path)],
                  "tests/live/programs/stream_server.c")


def build_package(server: Server, workdir: Path) -> Package:
    """`hpkg build` the server's pair (unsigned) and open the package the way `hpkg apply` does."""
    from hpkg.loader.trust import open_package

    workdir.mkdir(parents=True, exist_ok=True)
    package = workdir / f"{server.baseline.parent.name}-{server.baseline.name}.hpkg"
    try:
        report = engine.cli_build(server.baseline, server.fixed, package)
    except engine.EngineError as exc:
        raise PauseError(str(exc)) from exc
    if report.outcome != "built":
        raise PauseError(f"hpkg build {report.outcome}: {'; '.join(report.reasons)}")
    return open_package(package, None, allow_unsigned=True).package


def start(server: Server, port: int) -> tuple[subprocess.Popen[str], int]:
    """Start the baseline; return the process and the port from its ready line."""
    process = subprocess.Popen(server.argv(server.baseline, port), stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    match = READY_LINE.match(line)
    if match is None:
        process.kill()
        process.wait()
        raise PauseError(f"{server.name} printed {line!r} instead of 'listening on PORT'")
    return process, int(match.group(1))


def first_answer(port: int) -> str:
    """Ask until the server answers; the answer."""
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while (answer := ask(port)) is None:
        if time.monotonic() > deadline:
            raise PauseError(f"no answer on port {port}")
        time.sleep(0.0005)
    return answer


@dataclass(frozen=True)
class LiveRound:
    """One apply-and-revert under the stream."""

    apply_pause_ms: float
    revert_pause_ms: float
    apply_wall_ms: float
    floor_ms: tuple[float, float]  # the stop with no work, just before the apply and just before the revert
    tally: Tally  # the stream from the apply's start until it is answered again after the revert
    fixed_answers: int  # the fix's answers (414) between the apply's return and the revert's start
    counter_kept: bool  # the server's request count went on across the round: its state was kept


def live_round(package: Package, pid: int, port: int, stream: RequestStream) -> LiveRound:
    """Apply, let the fix answer some requests, revert; a request before and after shows whether the
    server's request count went on (its state kept) across the round."""
    from bench.pause_curve import floor_ms
    from hpkg.loader.apply import apply_to_process
    from hpkg.loader.revert import revert_process

    number_before = _request_number(first_answer(port))
    before = stream.tally()
    apply_floor = floor_ms(pid)
    started = time.perf_counter()
    applied = apply_to_process(package, pid, APPLY_TIMEOUT_SECONDS)
    apply_wall = (time.perf_counter() - started) * 1000
    patched_from = stream.tally()
    patched_until = stream.wait_for_answers(ANSWERS_WHILE_PATCHED)
    revert_floor = floor_ms(pid)
    reverted = revert_process(pid, timeout=APPLY_TIMEOUT_SECONDS)
    after = stream.wait_for_answers(CLIENTS)  # the stream goes on after the revert
    number_after = _request_number(first_answer(port))
    return LiveRound(
        applied.pause_ms,
        reverted.pause_ms,
        apply_wall,
        (apply_floor, revert_floor),
        after.since(before),
        patched_until.since(patched_from).fixed,
        number_after > number_before,  # a restarted server would count from 1 again
    )


def _request_number(answer: str) -> int:
    """The server-wide request count an answer carries ("... (#N)"), -1 where it carries none."""
    match = re.search(r"\(#(\d+)\)$", answer)
    return int(match.group(1)) if match else -1


@dataclass
class Running:
    """The server process the rounds currently talk to; a restart replaces it."""

    process: subprocess.Popen[str]
    port: int

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def restart_round(server: Server, running: Running, stream: RequestStream) -> tuple[float, Tally, int]:
    """SIGTERM the server and start it again, on the same port where it takes one (the sample does):
    ms from SIGTERM to the new process's first answer, the tally until every client is answered
    again, and the request number (#N) of that first answer."""
    before = stream.tally()
    started = time.perf_counter()
    running.process.send_signal(signal.SIGTERM)
    running.process.wait()
    generation = stream.new_generation()
    running.process, running.port = start(server, running.port)
    stream.move_to(running.port)
    answer = first_answer(running.port)
    restart_ms = (time.perf_counter() - started) * 1000
    after = stream.wait_for_generation(generation)
    return restart_ms, after.since(before), _request_number(answer)


def measure_server(server: Server, package: Package, rounds: int) -> PauseResult:
    """Interleave `rounds` live rounds with `rounds` restarts on one server under one request stream."""
    running = Running(*start(server, 0))
    try:
        threads = len(os.listdir(f"/proc/{running.process.pid}/task"))
        apply_pause, revert_pause, apply_wall, restart, floors = [], [], [], [], []
        live_failed, restart_failed, fixed_seen, counters, kept = [], [], [], [], []
        wrong = 0
        with RequestStream(running.port, CLIENTS) as stream:
            stream.wait_for_answers(100)
            for index in range(rounds):
                # Alternate which goes first, so slow drift of the machine's load hits both alike.
                order = ("live", "restart") if index % 2 == 0 else ("restart", "live")
                for kind in order:
                    if kind == "live":
                        live = live_round(package, running.process.pid, running.port, stream)
                        apply_pause.append(live.apply_pause_ms)
                        revert_pause.append(live.revert_pause_ms)
                        apply_wall.append(live.apply_wall_ms)
                        floors.extend(live.floor_ms)
                        live_failed.append(live.tally.failed)
                        wrong += live.tally.wrong
                        fixed_seen.append(live.fixed_answers)
                        kept.append(live.counter_kept)
                    else:
                        ms, tally, number = restart_round(server, running, stream)
                        restart.append(ms)
                        restart_failed.append(tally.failed)
                        counters.append(number)
                        stream.wait_for_answers(100)
            total = stream.tally()
    finally:
        running.stop()  # whichever process runs now, also when a round failed half-way
    return PauseResult(
        name=server.name,
        source=server.source,
        rounds=rounds,
        threads=threads,
        apply_pause_ms=Summary.of(apply_pause),
        revert_pause_ms=Summary.of(revert_pause),
        floor_ms=Summary.of(floors),
        apply_wall_ms=Summary.of(apply_wall),
        restart_ms=Summary.of(restart),
        live_failed=tuple(live_failed),
        restart_failed=tuple(restart_failed),
        live_wrong=wrong,
        fixed_answers_while_patched=tuple(fixed_seen),
        requests_answered=total.answered,
        counter_after_restart=tuple(counters),
        counter_kept_live=tuple(kept),
    )


def run_pause(workdir: Path, rounds: int) -> tuple[PauseResult, ...]:
    """Both servers, each measured on its own; a server that cannot be measured says why."""
    from hpkg.errors import HpkgError

    results = []
    makers: tuple[tuple[str, str, Callable[[], Server]], ...] = (
        ("14-threaded-server", "samples/14-threaded-server", threaded_sample),
        ("stream_server (16 workers)", "tests/live/programs/stream_server.c",
         lambda: stream_server(workdir / "pause")),
    )  # fmt: skip
    for name, source, make in makers:
        try:
            server = make()
            package = build_package(server, workdir / "pause")
            results.append(measure_server(server, package, rounds))
        except (PauseError, StreamError, HpkgError, OSError) as exc:
            results.append(PauseResult(name, source, error=f"{exc.__class__.__name__}: {exc}"))
    return tuple(results)
