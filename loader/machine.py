"""Run a verb over processes of the machine (`apply --all`, `revert --all`), one outcome per process.

Each process is handled on its own: a refusal, a permission problem or a process exiting half-way is
that process's outcome and never stops the others. A process that exits while hpkg works on it is
GONE, whatever error its disappearance surfaced as (an empty /proc/PID/maps reads as "runs no image
with the baseline's build-id"): a refusal is only believed of a process that is still there.

Processes are handled in parallel by a bounded pool of threads. ptrace ties a tracee to the *thread*
that attached it, so each process's whole apply or revert (attach, inject, switch, detach) runs in
one thread, from `apply_to_process`/`revert_process` to their return; threads share no target.

Ctrl-C: the caller's thread holds SIGINT back (loader/interrupts) while the pool works; a worker
starts no new process once it arrived, and one in the middle of an apply takes it at apply's own
safe points (as `apply --pid` would). The outcomes reached are kept, then KeyboardInterrupt is raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from enum import Enum

from hpkg.errors import HpkgError, RefusedError
from hpkg.formats.model import Package
from hpkg.loader import interrupts, procfs
from hpkg.loader.affected import (
    AffectedProcess,
    command_of,
    scan_for_baselines,
    scan_for_packages,
    scan_for_pe_baselines,
)
from hpkg.loader.apply import apply_to_process
from hpkg.loader.revert import revert_process
from hpkg.loader.terminal import printable

DEFAULT_JOBS = 4


class Outcome(Enum):
    """What became of one process; the value is the word printed and put in JSON."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already applied"
    REVERTED = "reverted"
    NOT_APPLIED = "not applied"
    REFUSED = "refused"
    GONE = "gone"


@dataclass(frozen=True)
class ProcessOutcome:
    """One process after a verb: who it is, what hpkg did, why not (refused, gone) and its pause."""

    pid: int
    command: str
    image: str  # the baseline image (apply) or the image reverted; "" when unknown
    package_id: str  # the package applied, or those reverted (comma-separated); "" when none
    outcome: Outcome
    reason: str = ""  # one line, for REFUSED and GONE (and which level, for ALREADY_APPLIED)
    pause_ms: float | None = None  # the longest stop of the process's threads, when it was stopped

    @property
    def changed(self) -> bool:
        """Whether the process was changed: a package switched in or taken out."""
        return self.outcome in (Outcome.APPLIED, Outcome.REVERTED)

    def line(self) -> str:
        """`PID COMMAND IMAGE: OUTCOME[: REASON][ (pause N ms)]`, every name escaped for the terminal."""
        image = printable(self.image) if self.image else "-"
        text = f"{self.pid} {printable(self.command) or '?'} {image}: {self.outcome.value}"
        if self.reason:
            text += f": {printable(self.reason)}"
        if self.pause_ms is not None:
            text += f" (pause {self.pause_ms:.3f} ms)"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "command": self.command,
            "image": self.image,
            "package_id": self.package_id,
            "outcome": self.outcome.value,
            "changed": self.changed,
            "reason": self.reason,
            "pause_ms": round(self.pause_ms, 3) if self.pause_ms is not None else None,
        }


@dataclass(frozen=True)
class MachineResult:
    """A verb run over the machine: one outcome per process (by pid), and the pids hpkg could not read."""

    verb: str  # "apply" or "revert"
    package_id: str | None  # the package applied, or the one `revert --package` named
    outcomes: tuple[ProcessOutcome, ...]
    unreadable: tuple[int, ...] = ()  # processes whose maps we may not read: not looked at

    @property
    def changed(self) -> bool:
        """Whether any process was changed."""
        return any(o.changed for o in self.outcomes)

    @property
    def counts(self) -> dict[str, int]:
        """How many processes ended with each outcome (every outcome listed, zeros included)."""
        return {kind.value: sum(o.outcome is kind for o in self.outcomes) for kind in Outcome}

    @property
    def refused(self) -> tuple[ProcessOutcome, ...]:
        """The processes the verb could not be carried out in (a process that went away is not one)."""
        return tuple(o for o in self.outcomes if o.outcome is Outcome.REFUSED)

    def summary(self) -> str:
        """One line: how many processes, how many of each outcome, and what was not looked at."""
        what = f"{self.verb} {printable(self.package_id)}" if self.package_id else self.verb
        if not self.outcomes:
            none = "no process maps its baseline" if self.verb == "apply" else "no process carries it"
            if self.verb != "apply" and self.package_id is None:
                none = "no process carries an hpkg package"
            text = f"{what}: {none}"
        else:
            parts = ", ".join(f"{n} {kind}" for kind, n in self.counts.items() if n)
            total = len(self.outcomes)
            text = f"{what}: {total} process{'es' * (total != 1)}: {parts}"
        if self.unreadable:
            text += f"; {len(self.unreadable)} not examined (permission denied reading their maps)"
        return text

    def lines(self) -> list[str]:
        """One line per process, then the summary."""
        return [o.line() for o in self.outcomes] + [self.summary()]

    def to_json(self) -> dict[str, object]:
        return {
            "verb": self.verb,
            "package_id": self.package_id,
            "changed": self.changed,
            "summary": self.counts,
            "processes": [o.to_json() for o in self.outcomes],
            "unreadable_pids": list(self.unreadable),
        }


def _one_line(exc: HpkgError) -> str:
    """An error as one line: its message, and the first reason of a refusal (the rest are alike)."""
    text = str(exc)
    if isinstance(exc, RefusedError) and exc.reasons:
        more = len(exc.reasons) - 1
        text += f" ({exc.reasons[0]}{f'; {more} more' if more else ''})"
    return text


def _baseline_path(pid: int, build_id: str) -> str:
    """The path of the baseline image in `pid`, for a line about a process apply did not return from."""
    try:
        images = procfs.find_images_by_build_id(pid, build_id)
    except HpkgError:
        return ""
    return images[0].path if images else ""


def _apply_one(package: Package, pid: int, timeout: float, found: AffectedProcess | None) -> ProcessOutcome:
    """Apply to one process and say what became of it; target-level problems are outcomes, not raised."""
    started = procfs.start_time(pid)
    package_id = package.identity.package_id
    command = found.command if found is not None else command_of(pid)
    try:
        result = apply_to_process(package, pid, timeout)
    except HpkgError as exc:
        image = found.image.path if found is not None else _baseline_path(pid, package.target.build_id.hex())
        if not started or procfs.has_exited(pid, started):
            return ProcessOutcome(pid, command, image, package_id, Outcome.GONE, "the process exited")
        return ProcessOutcome(pid, command, image, package_id, Outcome.REFUSED, _one_line(exc))
    paths = [a.image.path for a in result.images] + [c.image.path for c in result.carrying]
    image = paths[0] if paths else ""
    if result.changed:
        return ProcessOutcome(pid, command, image, package_id, Outcome.APPLIED, "", result.pause_ms)
    reason = result.carrying[0].detail(package) if result.carrying else ""
    return ProcessOutcome(pid, command, image, package_id, Outcome.ALREADY_APPLIED, reason)


def apply_to_pid(package: Package, pid: int, timeout: float) -> ProcessOutcome:
    """Apply `package` to process `pid`: applied, already applied, refused (why) or gone. Never raises for
    what the target does or is (a refusal, its exit, a permission problem); KeyboardInterrupt passes."""
    return _apply_one(package, pid, timeout, None)


def _revert_one(package_id: str | None, pid: int, command: str, timeout: float) -> ProcessOutcome:
    """Revert in one process and say what became of it; target-level problems are outcomes, not raised."""
    started = procfs.start_time(pid)
    try:
        result = revert_process(pid, package_id, timeout)
    except HpkgError as exc:
        if not started or procfs.has_exited(pid, started):
            return ProcessOutcome(pid, command, "", package_id or "", Outcome.GONE, "the process exited")
        return ProcessOutcome(pid, command, "", package_id or "", Outcome.REFUSED, _one_line(exc))
    if not result.changed:
        return ProcessOutcome(pid, command, "", package_id or "", Outcome.NOT_APPLIED)
    images = ", ".join(i.image_path for i in result.images)
    ids = ", ".join(p for i in result.images for p, _level in i.packages)
    reason = "" if result.images else f"freed {len(result.freed_orphans)} allocation(s) with no record"
    kept = [r for i in result.images for r in i.retained]
    if kept:
        size = sum(r.allocation.size for r in kept) // 1024
        reason = f"{size} KiB kept mapped, retired: {kept[0].word.describe()} points into it"
    return ProcessOutcome(pid, command, images, ids, Outcome.REVERTED, reason, result.pause_ms)


def revert_pid(package_id: str | None, pid: int, timeout: float) -> ProcessOutcome:
    """Revert every package (or `package_id`) in process `pid`: reverted, not applied, refused or gone."""
    return _revert_one(package_id, pid, command_of(pid), timeout)


Report = Callable[[ProcessOutcome], None]


def _run(tasks: Sequence[tuple[int, Callable[[], ProcessOutcome]]], jobs: int,
         report: Report | None) -> tuple[ProcessOutcome, ...]:
    """Run one task per process on at most `jobs` threads; the outcomes by pid, each reported as it ends.

    The caller's thread holds Ctrl-C back meanwhile: tasks not started when it arrives are skipped, the
    ones running finish (or stop at their own safe point), then KeyboardInterrupt is raised.
    """
    stop = threading.Event()

    def guarded(task: Callable[[], ProcessOutcome]) -> ProcessOutcome | None:
        if stop.is_set() or interrupts.pending():
            stop.set()
            return None
        try:
            return task()
        except KeyboardInterrupt:  # apply's own safe point took the Ctrl-C: that process is as it was
            stop.set()
            return None

    outcomes: list[ProcessOutcome] = []
    with interrupts.deferred_interrupts():
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="hpkg-target") as pool:
            futures = [pool.submit(guarded, task) for _pid, task in tasks]
            for future in as_completed(futures):
                outcome = future.result()
                if outcome is not None:
                    outcomes.append(outcome)
                    if report is not None:
                        report(outcome)
        if stop.is_set():
            raise KeyboardInterrupt
    return tuple(sorted(outcomes, key=lambda o: o.pid))


def apply_everywhere(
    package: Package,
    timeout: float,
    jobs: int = DEFAULT_JOBS,
    pids: Iterable[int] | None = None,
    *,
    report: Report | None = None,
) -> MachineResult:
    """Apply `package` to every process (of `pids`, default all) that maps its baseline, by build-id."""
    # A Windows package's baseline is a PE image in a process under Wine, found by its identity.
    scan_for = scan_for_pe_baselines if package.target.is_pe else scan_for_baselines
    scan = scan_for([package.target.build_id.hex()], pids)
    by_pid: dict[int, AffectedProcess] = {}
    for found in scan.affected:  # a process mapping the baseline twice is one apply (it takes both)
        by_pid.setdefault(found.pid, found)

    def task(found: AffectedProcess) -> Callable[[], ProcessOutcome]:
        return lambda: _apply_one(package, found.pid, timeout, found)

    outcomes = _run([(pid, task(found)) for pid, found in sorted(by_pid.items())], jobs, report)
    return MachineResult("apply", package.identity.package_id, outcomes, scan.unreadable)


def revert_everywhere(
    package_id: str | None,
    timeout: float,
    jobs: int = DEFAULT_JOBS,
    pids: Iterable[int] | None = None,
    *,
    report: Report | None = None,
) -> MachineResult:
    """Revert every package (or `package_id`) in every process (of `pids`) carrying hpkg package memory.

    A process whose record fails authentication is refused, as `revert --pid` refuses it: nothing is
    written there. With `package_id`, only processes with memory named for that package are looked at.
    """
    scan = scan_for_packages(pids)
    carrying = [c for c in scan.carrying if package_id is None or c.may_carry(package_id)]

    def task(pid: int, command: str) -> Callable[[], ProcessOutcome]:
        return lambda: _revert_one(package_id, pid, command, timeout)

    outcomes = _run([(c.pid, task(c.pid, c.command)) for c in carrying], jobs, report)
    return MachineResult("revert", package_id, outcomes, scan.unreadable)
