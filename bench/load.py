"""Load: many apply/revert cycles on the threaded server sample while clients stream requests.

`python -m bench --pair load` (selected by name only: 1,000 cycles take minutes). The server is
samples/14-threaded-server (8 workers); CLIENTS threads (bench/stream.py) keep asking it, alternating
a short path and one only the fix refuses, and every answer is checked against what the baseline or
the fix may say (a wrong answer must never happen). Each cycle applies the package live and reverts
it (the loader's own API, as `hpkg apply --pid` and `hpkg revert --pid` run it); a cycle whose apply
or revert fails is counted with its error, and the next cycle starts from whatever state the server
is in (a failed apply leaves it unpatched, a failed revert is retried by the next one). No timing is
asserted: the figures are counts.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.pause import (
    APPLY_TIMEOUT_SECONDS,
    CLIENTS,
    PauseError,
    Running,
    Summary,
    build_package,
    start,
    threaded_sample,
)
from bench.stream import RequestStream, StreamError

DEFAULT_CYCLES = 1000
ERRORS_KEPT = 5


@dataclass(frozen=True)
class LoadResult:
    """Counts of one load run; `error` instead of figures when it could not run at all."""

    name: str
    cycles: int = 0
    failed_cycles: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # error line → how often (the first few kinds)
    requests: int = 0  # answered during the cycles
    failed_requests: int = 0  # got no answer (the server drops none on a live patch)
    wrong_answers: int = 0  # neither the baseline's nor the fix's answer: must be 0
    fixed_answers: int = 0  # answers only the fix gives (414): the fix really served requests
    seconds: float = 0.0
    apply_pause_ms: Summary | None = None
    revert_pause_ms: Summary | None = None
    threads: int = 0
    clients: int = CLIENTS
    error: str | None = None


def run_cycles(package, pid: int, cycles: int, stream: RequestStream) -> tuple[Counter[str], list[float],
                                                                                list[float]]:  # fmt: skip
    """Apply and revert `cycles` times; the errors by kind and the pauses of the cycles that worked."""
    from hpkg.errors import HpkgError
    from hpkg.loader.apply import apply_to_process
    from hpkg.loader.revert import revert_process

    failures: Counter[str] = Counter()
    apply_pauses, revert_pauses = [], []
    for _ in range(cycles):
        try:
            applied = apply_to_process(package, pid, APPLY_TIMEOUT_SECONDS)
            stream.wait_for_answers(CLIENTS)  # every client is served by the fix at least once, or near
            reverted = revert_process(pid, timeout=APPLY_TIMEOUT_SECONDS)
        except HpkgError as exc:
            failures[f"{type(exc).__name__}: {exc}"] += 1
            continue
        apply_pauses.append(applied.pause_ms)
        revert_pauses.append(reverted.pause_ms)
        stream.wait_for_answers(CLIENTS)
    return failures, apply_pauses, revert_pauses


def run_load(workdir: Path, cycles: int = DEFAULT_CYCLES) -> tuple[LoadResult, ...]:
    """The threaded server sample under `cycles` apply/revert cycles and a continuous request stream."""
    from hpkg.errors import HpkgError

    name = "14-threaded-server"
    try:
        server = threaded_sample()
        package = build_package(server, workdir / "load")
        running = Running(*start(server, 0))
    except (PauseError, HpkgError, OSError) as exc:
        return (LoadResult(name, error=f"{exc.__class__.__name__}: {exc}"),)
    try:
        threads = len(os.listdir(f"/proc/{running.process.pid}/task"))
        with RequestStream(running.port, CLIENTS) as stream:
            stream.wait_for_answers(100)
            before = stream.tally()
            started = time.perf_counter()
            failures, apply_pauses, revert_pauses = run_cycles(package, running.process.pid, cycles, stream)
            seconds = time.perf_counter() - started
            during = stream.tally().since(before)
    except StreamError as exc:
        return (LoadResult(name, error=f"StreamError: {exc}"),)
    finally:
        running.stop()
    kept = dict(failures.most_common(ERRORS_KEPT))
    return (
        LoadResult(
            name=name,
            cycles=cycles,
            failed_cycles=sum(failures.values()),
            failures=kept,
            requests=during.answered,
            failed_requests=during.failed,
            wrong_answers=during.wrong,
            fixed_answers=during.fixed,
            seconds=round(seconds, 1),
            apply_pause_ms=Summary.of(apply_pauses) if apply_pauses else None,
            revert_pause_ms=Summary.of(revert_pauses) if revert_pauses else None,
            threads=threads,
        ),
    )
