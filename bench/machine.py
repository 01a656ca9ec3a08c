"""Machine-wide verbs: `hpkg apply --all` over many baseline processes, beside the loops they replace.

`python -m bench --pair machine` (selected by name only: the loops take about a minute). PROCESSES
servers of samples/14-threaded-server (8 workers each) run, built from the sample's source with the
ready flags and a build-id of this run's own, so that `--all` meets no process the bench did not
start. The rounds take turns (bench/timing.py):

- `apply --all`: one `hpkg apply PKG --all` (fresh interpreter, default --jobs), every server applied;
- `apply --all --jobs 1`: the same, one process at a time (what the parallelism gives, and what it
  costs: while one target is stopped, the other workers compete for the CPU and its pause grows);
- `apply --pid` loop: `hpkg apply PKG --pid PID` for each server in turn, what an operator did before;
- `apply --all` again: every server already carries the package (the idempotent re-run of a
  configuration-management tool: the scan and a record check per process, nothing stopped).

Between two timed applies the servers are reverted (in-process, not timed). Finding the affected
processes is measured beside the issue's loop of `hpkg verify PKG --pid` over every pid of /proc (one
round: it takes tens of seconds): `scan_for_baselines` in-process and `hpkg status` (the record scan)
through the CLI. Every apply's per-process pause is kept. No timing is asserted anywhere.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.pause import READY_FLAGS, READY_LINE, SAMPLES_DIR, PauseError, Summary
from bench.timing import interleaved_medians

PROCESSES = 20
HPKG = [sys.executable, "-m", "hpkg"]
SOURCE = SAMPLES_DIR / "14-threaded-server" / "sample.c"
COMMAND_DEADLINE_SECONDS = 600.0  # a safety net against a hang, not a timing assertion


@dataclass(frozen=True)
class MachineResult:
    """The figures of one machine-wide run; `error` instead of figures when it could not run."""

    name: str
    processes: int = 0  # baseline servers started (each 8 workers + main thread)
    machine_processes: int = 0  # processes in /proc during the run, the bench's own included
    rounds: int = 0
    jobs: int = 0  # the default --jobs of `apply --all`
    apply_all_s: Summary | None = None
    apply_all_one_job_s: Summary | None = None
    apply_pid_loop_s: Summary | None = None
    reapply_all_s: Summary | None = None
    status_s: Summary | None = None  # `hpkg status`, every process (CLI)
    scan_s: Summary | None = None  # scan_for_baselines over every process (in-process)
    verify_loop_s: float | None = None  # `hpkg verify --pid` over every pid, one round
    pause_ms: Summary | None = None  # every process's pause in the `apply --all` rounds
    pause_one_job_ms: Summary | None = None  # the same with --jobs 1: no other target worked on meanwhile
    error: str | None = None


def _hpkg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HPKG, *map(str, args)], capture_output=True, text=True,
                          timeout=COMMAND_DEADLINE_SECONDS)  # fmt: skip


def _build(workdir: Path) -> tuple[Path, Path]:
    """The server as baseline and fix with fresh build-ids, and an unsigned package; (baseline, package)."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for build, defines in (("baseline", ()), ("fixed", ("-DFIX",))):
        path = workdir / f"machine-server.{build}"
        flags = [f for f in READY_FLAGS if not f.startswith("-Wl,--build-id")]
        build_id = f"-Wl,--build-id=0x{secrets.token_hex(20)}"
        done = subprocess.run(["gcc", *flags, build_id, *defines, "-o", str(path), str(SOURCE)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise PauseError(f"gcc failed ({build}): {done.stderr.strip()[-200:]}")
        paths.append(path)
    package = workdir / "machine-server.hpkg"
    built = _hpkg("build", paths[0], paths[1], "-o", package)
    if built.returncode != 0:
        raise PauseError(f"hpkg build failed: {built.stderr.strip()[-200:]}")
    return paths[0], package


def _start(baseline: Path, count: int) -> list[subprocess.Popen[str]]:
    servers = []
    for _ in range(count):
        process = subprocess.Popen([str(baseline), "0"], stdout=subprocess.PIPE, text=True)
        servers.append(process)
        assert process.stdout is not None
        if READY_LINE.match(process.stdout.readline().strip()) is None:
            raise PauseError(f"{baseline.name} did not start")
    return servers


def _applied(done: subprocess.CompletedProcess[str], pids: set[int], want: str, pauses: list[float]) -> None:
    """Check one `apply --all --json`: exactly the servers, each with `want`; keep their pauses."""
    if done.returncode != 0:
        raise PauseError(f"apply --all exited {done.returncode}: {done.stderr.strip()[-200:]}")
    processes = json.loads(done.stdout)["processes"]
    outcomes = {p["pid"]: p["outcome"] for p in processes}
    if outcomes != dict.fromkeys(pids, want):
        raise PauseError(f"apply --all: expected {want!r} in the {len(pids)} servers, got {outcomes}")
    pauses.extend(p["pause_ms"] for p in processes if p["pause_ms"] is not None)


def _timed_with_undo(tasks: dict[str, Callable[[], object]], undo: Callable[[], object],
                     rounds: int) -> dict[str, Summary]:  # fmt: skip
    """Each task's wall seconds over `rounds` rounds taken in turns (the order rotating), with `undo`
    run untimed after every task: each apply starts from unpatched servers."""
    names = list(tasks)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            tasks[name]()
            samples[name].append(time.perf_counter() - started)
            undo()
    return {name: Summary.of(values) for name, values in samples.items()}


def run_machine(
    workdir: Path, rounds: int, processes: int = PROCESSES, verify_every_pid: bool = True
) -> tuple[MachineResult, ...]:
    """Start the servers, time the machine-wide verbs beside their loops, stop the servers.

    `verify_every_pid` False runs the `verify --pid` loop over the servers alone (the harness's test).
    """
    from hpkg.formats import read_package
    from hpkg.loader.affected import scan_for_baselines
    from hpkg.loader.machine import DEFAULT_JOBS, revert_everywhere

    name = f"14-threaded-server x{processes}"
    servers: list[subprocess.Popen[str]] = []
    try:
        baseline, package_path = _build(workdir / "machine")
        package = read_package(package_path.read_bytes()).package
        package_id, build_id = package.identity.package_id, package.target.build_id.hex()
        servers = _start(baseline, processes)
        pids = {s.pid for s in servers}
        pauses: list[float] = []
        pauses_one_job: list[float] = []

        def revert() -> None:
            result = revert_everywhere(package_id, 10.0, DEFAULT_JOBS, pids=sorted(pids))
            if {o.pid for o in result.outcomes if o.changed} != pids:
                raise PauseError(f"revert --all did not revert every server: {result.lines()}")

        def apply_all(*extra: str) -> None:
            done = _hpkg("apply", package_path, "--all", "--allow-unsigned", "--json", *extra)
            _applied(done, pids, "applied", pauses if not extra else pauses_one_job)

        def apply_loop() -> None:
            for pid in sorted(pids):
                done = _hpkg("apply", package_path, "--pid", str(pid), "--allow-unsigned")
                if done.returncode != 0:
                    raise PauseError(f"apply --pid {pid} exited {done.returncode}: {done.stderr.strip()}")

        applies = {"all": apply_all, "one job": lambda: apply_all("--jobs", "1"), "loop": apply_loop}
        timings = _timed_with_undo(applies, revert, rounds)
        # Everything applied once more, for the idempotent re-runs.
        apply_all()

        def reapply_all() -> None:
            done = _hpkg("apply", package_path, "--all", "--allow-unsigned", "--json")
            _applied(done, pids, "already applied", [])

        scans = {
            "reapply": reapply_all,
            "status": lambda: _hpkg("status", "--json"),
            "scan": lambda: scan_for_baselines([build_id]),
        }
        again = interleaved_medians(scans, rounds)
        machine_pids = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
        started = time.perf_counter()
        for pid in machine_pids if verify_every_pid else sorted(pids):
            _hpkg("verify", package_path, "--pid", str(pid), "--allow-unsigned")
        verify_loop = time.perf_counter() - started
        revert()

        return (
            MachineResult(
                name, processes, len(machine_pids) if verify_every_pid else processes, rounds, DEFAULT_JOBS,
                timings["all"], timings["one job"], timings["loop"],
                Summary.of(list(again["reapply"].samples)), Summary.of(list(again["status"].samples)),
                Summary.of(list(again["scan"].samples)), verify_loop, Summary.of(pauses) if pauses else None,
                Summary.of(pauses_one_job) if pauses_one_job else None,
            ),
        )  # fmt: skip
    except (PauseError, OSError, subprocess.SubprocessError) as exc:
        return (MachineResult(name, error=str(exc)),)
    finally:
        for server in servers:
            server.kill()
            server.wait()
