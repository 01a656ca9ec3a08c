"""The pause beside its floor, from 17 to 1,024 threads: what the switch costs over stopping the world.

The target, bench/programs/busy_threads.c, runs N threads that each call the patched function about
every millisecond (a busy function: some attempt may find a thread inside and retry). Each round, on
one process, takes turns: the floor (every thread seized, then stopped and resumed with no work in
between, by the loader's own stop: `Process.stop_all_threads`), an apply, the floor again, a revert.
The pause of an apply or revert is its successful attempt's stop (first interrupt to last detach);
`stopped` adds the attempts that found a thread inside. Ratios are of medians over the rounds.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.pause import READY_FLAGS, PauseError, Summary, build_package

if TYPE_CHECKING:
    from hpkg.formats.model import Package

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = REPO_ROOT / "bench" / "programs" / "busy_threads.c"
THREADS = (17, 64, 256, 1024)
QUICK_THREADS = (17, 64)
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class CurvePoint:
    """One thread count's figures (ms), or why it could not be measured."""

    threads: int
    rounds: int = 0
    floor_ms: Summary | None = None
    apply_pause_ms: Summary | None = None
    revert_pause_ms: Summary | None = None
    apply_stopped_ms: Summary | None = None  # over every attempt of the apply
    revert_stopped_ms: Summary | None = None
    apply_attempts: tuple[int, ...] = ()
    revert_attempts: tuple[int, ...] = ()
    error: str | None = None

    @property
    def apply_ratio(self) -> float | None:
        """Median apply pause / median floor."""
        return _ratio(self.apply_pause_ms, self.floor_ms)

    @property
    def revert_ratio(self) -> float | None:
        return _ratio(self.revert_pause_ms, self.floor_ms)

    @property
    def floor_per_thread_us(self) -> float | None:
        """The floor's median per thread, in microseconds: what stopping and resuming one thread costs."""
        return self.floor_ms.median * 1000 / self.threads if self.floor_ms else None


def _ratio(pause: Summary | None, floor: Summary | None) -> float | None:
    return pause.median / floor.median if pause and floor and floor.median > 0 else None


@dataclass(frozen=True)
class BusyServer:
    """The two builds of the busy program."""

    baseline: Path
    fixed: Path

    @property
    def name(self) -> str:
        return "busy_threads"


def build(workdir: Path) -> BusyServer:
    """busy_threads.c as baseline and -DFIX, with the hotpatch-ready flags."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for build_name, defines in (("baseline", ()), ("fixed", ("-DFIX",))):
        path = workdir / f"busy_threads.{build_name}"
        command = ["gcc", *READY_FLAGS, *defines, "-o", str(path), str(SOURCE)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise PauseError(f"gcc failed for busy_threads ({build_name}): {done.stderr.strip()[-200:]}")
        paths.append(path)
    return BusyServer(paths[0], paths[1])


def floor_ms(pid: int) -> float:
    """Stop every thread of `pid` and resume it with no work in between: the loader's own stop."""
    from hpkg.loader.process import Process

    with Process(pid) as process, process.stop_all_threads() as stopped:
        pass
    return stopped.pause * 1000


def measure_point(server: BusyServer, package: Package, threads: int, rounds: int) -> CurvePoint:
    """`rounds` interleaved rounds of floor, apply, floor, revert on one process of `threads` threads."""
    from hpkg.loader.apply import apply_to_process
    from hpkg.loader.revert import revert_process

    target = subprocess.Popen([str(server.baseline), str(threads)], stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None
        line = target.stdout.readline().strip()
        if line != f"ready {threads}":
            raise PauseError(f"busy_threads {threads} printed {line!r}")
        floors, applies, reverts, apply_stopped, revert_stopped = [], [], [], [], []
        apply_attempts, revert_attempts = [], []
        for _round in range(rounds):
            floors.append(floor_ms(target.pid))
            applied = apply_to_process(package, target.pid, TIMEOUT_SECONDS).images[0]
            applies.append(applied.pause_seconds * 1000)
            apply_stopped.append(applied.stopped_seconds * 1000)
            apply_attempts.append(applied.attempts)
            floors.append(floor_ms(target.pid))
            reverted = revert_process(target.pid, timeout=TIMEOUT_SECONDS).images[0]
            reverts.append(reverted.pause_seconds * 1000)
            revert_stopped.append(reverted.stopped_seconds * 1000)
            revert_attempts.append(reverted.attempts)
    finally:
        target.kill()
        target.wait()
    return CurvePoint(
        threads, rounds, Summary.of(floors), Summary.of(applies), Summary.of(reverts),
        Summary.of(apply_stopped), Summary.of(revert_stopped), tuple(apply_attempts), tuple(revert_attempts),
    )  # fmt: skip


def run_curve(workdir: Path, rounds: int, counts: tuple[int, ...] = THREADS) -> tuple[CurvePoint, ...]:
    """Every thread count of `counts`, each on a process of its own; a count that fails says why."""
    from hpkg.errors import HpkgError

    try:
        server = build(workdir / "curve")
        package = build_package(server, workdir / "curve")  # type: ignore[arg-type]
    except (PauseError, HpkgError, OSError) as exc:
        return tuple(CurvePoint(n, error=f"{exc.__class__.__name__}: {exc}") for n in counts)
    points = []
    for threads in counts:
        try:
            points.append(measure_point(server, package, threads, rounds))
        except (PauseError, HpkgError, OSError) as exc:
            points.append(CurvePoint(threads, error=f"{exc.__class__.__name__}: {exc}"))
    return tuple(points)
