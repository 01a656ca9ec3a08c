"""Same-run A/B of the window's check on one process: the one-call check against the step-by-step one.

`python -m bench.pause_ab [--threads N] [--rounds R] [--json]` starts one bench/programs/busy_threads.c
process of N threads (each calling the patched function every millisecond) and, each round, takes turns
(the order alternating): the floor, an apply and the floor, a revert, once with the check as one call of
the window's helper (loader/window_check.py) and once step by step (`safety.ONE_CALL` off: the third and
fourth rounds' window). Each pause is compared with the median floor of the same run: on a shared
machine, runs minutes apart differ by more than what one change gains. Medians and maxima in ms, the
ratio to the floor, and the median of each step of the window. Exit status 0; 1 when the program could not
be built or started; 2 for bad arguments (one `error:` line each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.pause import PauseError, build_package
from bench.pause_curve import build, floor_window, median_steps

MODES = ("one call", "step by step")


@dataclass(frozen=True)
class Side:
    """One mode's apply or revert over the rounds."""

    mode: str
    what: str  # "apply" or "revert"
    median_ms: float
    maximum_ms: float
    ratio: float  # median / the run's median floor
    steps: tuple[tuple[str, float], ...]  # (step, median ms)


@dataclass(frozen=True)
class Comparison:
    threads: int
    rounds: int
    floor_ms: float
    floor_steps: tuple[tuple[str, float], ...]
    sides: tuple[Side, ...]


def measure(threads: int, rounds: int, workdir: Path) -> Comparison:
    """`rounds` rounds of both modes on one busy_threads process of `threads` threads."""
    from hpkg.loader import safety
    from hpkg.loader.apply import apply_to_process
    from hpkg.loader.revert import revert_process

    server = build(workdir)
    package = build_package(server, workdir)  # type: ignore[arg-type]
    target = subprocess.Popen([str(server.baseline), str(threads), "1"], stdout=subprocess.PIPE, text=True)
    floors: list[tuple[tuple[str, float], ...]] = []
    windows: dict[tuple[str, str], list[tuple[tuple[str, float], ...]]] = {}
    pauses: dict[tuple[str, str], list[float]] = {}
    try:
        assert target.stdout is not None
        line = target.stdout.readline().strip()
        if line != f"ready {threads}":
            raise PauseError(f"busy_threads {threads} printed {line!r}")
        for index in range(rounds):
            for mode in MODES if index % 2 == 0 else reversed(MODES):
                safety.ONE_CALL = mode == "one call"
                for what in ("apply", "revert"):
                    floors.append(floor_window(target.pid))
                    if what == "apply":
                        done = apply_to_process(package, target.pid, 10.0).images[0]
                    else:
                        done = revert_process(target.pid, timeout=10.0).images[0]
                    pauses.setdefault((mode, what), []).append(done.pause_seconds * 1000)
                    windows.setdefault((mode, what), []).append(done.window)
    finally:
        safety.ONE_CALL = True
        target.kill()
        target.wait()
    floor = statistics.median(sum(seconds for _step, seconds in window) * 1000 for window in floors)
    sides = tuple(
        Side(mode, what, statistics.median(samples), max(samples), statistics.median(samples) / floor,
             median_steps(windows[(mode, what)]))
        for (mode, what), samples in pauses.items()
    )  # fmt: skip
    return Comparison(threads, rounds, floor, median_steps(floors), sides)


def to_text(comparison: Comparison) -> str:
    """The comparison as lines: the floor, then each mode's apply and revert with their steps."""
    def steps(pairs: tuple[tuple[str, float], ...]) -> str:
        return " ".join(f"{name} {ms * 1000:.0f}" for name, ms in pairs)

    lines = [f"{comparison.threads} threads, {comparison.rounds} rounds each mode: floor "
             f"{comparison.floor_ms:.3f} ms ({steps(comparison.floor_steps)} µs)"]  # fmt: skip
    for side in sorted(comparison.sides, key=lambda s: (s.what, s.mode)):
        lines.append(f"  {side.what:6} {side.mode:12} {side.median_ms:.3f} ms (max {side.maximum_ms:.2f})"
                     f" {side.ratio:.2f}x floor; µs: {steps(side.steps)}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pause_ab", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=17)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    arguments = parser.parse_args(argv)
    if arguments.threads < 1 or arguments.rounds < 1:
        sys.stderr.write("error: --threads and --rounds must be at least 1\n")
        return 2
    with tempfile.TemporaryDirectory(prefix="hpkg-pause-ab-") as workdir:
        try:
            comparison = measure(arguments.threads, arguments.rounds, Path(workdir))
        except PauseError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 1
    print(json.dumps(asdict(comparison)) if arguments.json else to_text(comparison))
    return 0


if __name__ == "__main__":
    sys.exit(main())
