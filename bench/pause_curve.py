"""The pause beside its floor, from 17 to 1,024 threads: what the switch costs over stopping the world.

The target, bench/programs/busy_threads.c, runs N threads that each call the patched function about
every millisecond (a busy function: some attempt may find a thread inside and retry; at 1,024 threads
it is inside on every attempt, and the apply is refused at the timeout: those rounds are counted, with
the stopped time they cost; 1,024 threads calling it every 10 ms are measured beside). Each round, on
one process, takes turns: the floor (every thread seized, then stopped and resumed with no work in
between, by the loader's own stop: `Process.stop_all_threads`), an apply, the floor again, a revert.
The pause of an apply or revert is its successful attempt's stop (first interrupt to last detach);
`stopped` adds the attempts that found a thread inside. Ratios are of medians over the rounds.
"""

from __future__ import annotations

import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.pause import READY_FLAGS, PauseError, Summary, build_package

if TYPE_CHECKING:
    from hpkg.formats.model import Package

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = REPO_ROOT / "bench" / "programs" / "busy_threads.c"
# (threads, ms between two calls of the patched function by one thread). At 1,024 threads calling it
# every millisecond the program wants more CPU than 2 cores have: preempted threads sit inside the
# function, so it is busy at every stop; every 10 ms it is not.
THREADS = ((17, 1), (64, 1), (256, 1), (1024, 1), (1024, 10))
QUICK_THREADS = ((17, 1), (64, 1))
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class CurvePoint:
    """One thread count's figures (ms), or why it could not be measured."""

    threads: int
    period_ms: int = 1  # each thread calls the patched function this often
    rounds: int = 0
    floor_ms: Summary | None = None
    apply_pause_ms: Summary | None = None
    revert_pause_ms: Summary | None = None
    apply_stopped_ms: Summary | None = None  # over every attempt of the apply
    revert_stopped_ms: Summary | None = None
    apply_attempts: tuple[int, ...] = ()
    revert_attempts: tuple[int, ...] = ()
    apply_refused: int = 0  # rounds whose apply was refused at the timeout (a thread inside every time)
    refusal: str = ""  # the first refusal's reasons, one line each
    # Where the pause goes: (step, median ms over the rounds) for the floor, the apply and the revert, in
    # the order of the window (loader/process.py `window_steps`).
    floor_steps: tuple[tuple[str, float], ...] = ()
    apply_steps: tuple[tuple[str, float], ...] = ()
    revert_steps: tuple[tuple[str, float], ...] = ()
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
    return sum(seconds for _step, seconds in floor_window(pid)) * 1000


def floor_window(pid: int) -> tuple[tuple[str, float], ...]:
    """The floor's steps (interrupt, wait, list threads, release) and their seconds."""
    from hpkg.loader.process import Process

    with Process(pid) as process, process.stop_all_threads() as stopped:
        pass
    return stopped.window_steps()


def median_steps(windows: list[tuple[tuple[str, float], ...]]) -> tuple[tuple[str, float], ...]:
    """Each step's median over the windows, in ms, in the order the steps first appear."""
    names: list[str] = []
    for window in windows:
        names += [step for step, _seconds in window if step not in names]
    tables = [dict(window) for window in windows]
    return tuple((name, statistics.median([t.get(name, 0.0) for t in tables]) * 1000) for name in names)


def measure_point(
    server: BusyServer, package: Package, threads: int, period_ms: int, rounds: int
) -> CurvePoint:
    """`rounds` interleaved rounds of floor, apply, floor, revert on one process of `threads` threads.

    An apply refused because the function stayed busy until the timeout is counted, its stopped time
    (over every attempt) kept; that round has no revert.
    """
    from hpkg.loader.apply import apply_to_process
    from hpkg.loader.live import BusyRefusal
    from hpkg.loader.revert import revert_process

    argv = [str(server.baseline), str(threads), str(period_ms)]
    target = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None
        line = target.stdout.readline().strip()
        if line != f"ready {threads}":
            raise PauseError(f"busy_threads {threads} printed {line!r}")
        floors, applies, reverts, apply_stopped, revert_stopped = [], [], [], [], []
        apply_attempts, revert_attempts = [], []
        floor_windows, apply_windows, revert_windows = [], [], []
        refused, refusal = 0, ""

        def floor() -> None:
            floor_windows.append(floor_window(target.pid))
            floors.append(sum(seconds for _step, seconds in floor_windows[-1]) * 1000)

        for _round in range(rounds):
            floor()
            try:
                applied = apply_to_process(package, target.pid, TIMEOUT_SECONDS).images[0]
            except BusyRefusal as busy:
                refused += 1
                refusal = refusal or "\n".join((str(busy), *busy.reasons))
                apply_stopped.append(busy.stopped_seconds * 1000)
                apply_attempts.append(busy.attempts)
                continue
            applies.append(applied.pause_seconds * 1000)
            apply_stopped.append(applied.stopped_seconds * 1000)
            apply_attempts.append(applied.attempts)
            apply_windows.append(applied.window)
            floor()
            reverted = revert_process(target.pid, timeout=TIMEOUT_SECONDS).images[0]
            revert_windows.append(reverted.window)
            reverts.append(reverted.pause_seconds * 1000)
            revert_stopped.append(reverted.stopped_seconds * 1000)
            revert_attempts.append(reverted.attempts)
    finally:
        target.kill()
        target.wait()
    return CurvePoint(
        threads, period_ms, rounds, Summary.of(floors), _summary(applies), _summary(reverts),
        _summary(apply_stopped), _summary(revert_stopped), tuple(apply_attempts), tuple(revert_attempts),
        refused, refusal, median_steps(floor_windows), median_steps(apply_windows),
        median_steps(revert_windows),
    )  # fmt: skip


def _summary(samples: list[float]) -> Summary | None:
    return Summary.of(samples) if samples else None


def run_curve(
    workdir: Path, rounds: int, counts: tuple[tuple[int, int], ...] = THREADS
) -> tuple[CurvePoint, ...]:
    """Every thread count of `counts`, each on a process of its own; a count that fails says why."""
    from hpkg.errors import HpkgError

    try:
        server = build(workdir / "curve")
        package = build_package(server, workdir / "curve")  # type: ignore[arg-type]
    except (PauseError, HpkgError, OSError) as exc:
        return tuple(CurvePoint(n, ms, error=f"{exc.__class__.__name__}: {exc}") for n, ms in counts)
    points = []
    for threads, period_ms in counts:
        try:
            points.append(measure_point(server, package, threads, period_ms, rounds))
        except (PauseError, HpkgError, OSError) as exc:
            points.append(CurvePoint(threads, period_ms, error=f"{exc.__class__.__name__}: {exc}"))
    return tuple(points)
