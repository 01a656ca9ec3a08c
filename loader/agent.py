"""`hpkg agent`: keep every process of the machine patched with the packages of the store, as they start.

At start-up the agent reads the store (loader/store.py) and applies every package to every process
that maps its baseline. Then it sleeps until something happens:

- **exec** (the kernel's process connector, loader/exec_events.py): a new program. Its libraries
  are not mapped yet, so the agent asks where its dynamic linker is (loader/startup.py) and looks
  when it is done, asking 1 ms after the exec, then 1, 2, 4 … 64 ms later (never spinning; at most
  `startup_wait` seconds), then
  again at `young_checks` seconds after the exec for libraries `dlopen`ed during start-up;
- **fork** of a process that maps a served baseline: the child is checked (it may have forked while
  its parent was being patched);
- **a full pass** every `rescan_interval` seconds, for a library `dlopen`ed late in a process's life:
  the maps of each process whose size (/proc/PID/statm) changed since they were last read, and every
  process's maps on each sixth pass. The build-id of each mapped file is remembered
  (loader/mapped_files.py), so a pass costs the reading of those files (figures in bench/RESULTS.md);
- **the store changed** (inotify on its directories, loader/dir_watch.py, or SIGHUP): it is read again;
  a new package gets a pass of its own, a removed one is no longer served;
- **overrun** (the kernel dropped events): everything is looked at again.

Each process is patched through `loader.machine.apply_to_pid` (the same path as `hpkg apply --all`)
on a small pool of threads, one job per process at a time, each under the store's shared lock after
checking that the package is still installed, so that `hpkg uninstall` (which holds it exclusively)
never races an apply. What the agent knows of a process is a cache of what its in-target records
say: after a restart, including after SIGKILL, every process already patched answers "already
applied" and nothing is written. A process refused is tried again after 30 s, doubling to an hour.

SIGTERM and SIGINT stop it cleanly: no new job starts, the running ones finish (an apply holds a
target's threads only inside its own bounded steps; it never leaves one stopped or traced), then it
exits 0. Everything it does is one log line (loader/agent_log.py).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import queue
import select
import signal
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from types import FrameType

from hpkg.errors import HpkgError
from hpkg.loader.agent_log import EventLog
from hpkg.loader.dir_watch import DirectoryWatch
from hpkg.loader.exec_events import EventKind, ExecEvents, Overrun, ProcessEvent
from hpkg.loader.machine import Outcome, ProcessOutcome, apply_to_pid
from hpkg.loader.mapped_files import BuildIdIndex, MappedBaseline, process_ids
from hpkg.loader.startup import Startup, startup_state
from hpkg.loader.store import Store, StoredPackage

READY_POLL_FIRST = 0.001  # seconds: the first wait for a dynamic linker still at work, doubled each time
READY_POLL_LONGEST = 0.064
RETRY_FIRST = 30.0  # seconds before a refused process is tried again, doubled each time
RETRY_LONGEST = 3600.0
STORE_SETTLE = 0.02  # seconds to let a burst of store changes (record, package, key) finish
FULL_MAPS_EVERY = 6  # every sixth periodic pass reads every process's maps, changed size or not


def _vm_size(pid: int) -> int | None:
    """The process's total mapped size in pages (/proc/PID/statm); None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split(maxsplit=1)[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class AgentSettings:
    """How the agent paces itself; the defaults are what `hpkg agent` uses."""

    timeout: float = 5.0  # per process: how long an apply waits for no thread in a replaced function
    jobs: int = 2  # processes patched at once
    rescan_interval: float = 5.0  # seconds between full passes (libraries dlopen'ed late)
    young_checks: tuple[float, ...] = (0.25, 1.0, 4.0)  # seconds after an exec: libraries dlopen'ed early
    startup_wait: float = 2.0  # the longest wait for a dynamic linker before looking anyway


class Seen(Enum):
    """What the agent learnt of one baseline image of one process."""

    DONE = "done"  # the highest stored level (or a higher one) is applied there
    REFUSED = "refused"  # to be tried again at `retry_at`


@dataclass(frozen=True)
class Knowledge:
    """The agent's memory of one baseline in one process: which images it saw, and what became of them."""

    starts: frozenset[int]  # where the baseline's images began: a new one (dlopen again, exec) is new work
    seen: Seen
    retry_at: float = 0.0
    attempts: int = 0


@dataclass
class Pass:
    """A batch of jobs started together (start-up, a new package, an overrun): counted to log a summary."""

    reason: str
    outstanding: int = 0
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    """What one job did in one process: an outcome per package tried (None: uninstalled meanwhile)."""

    pid: int
    baselines: tuple[MappedBaseline, ...]
    outcomes: tuple[tuple[StoredPackage, ProcessOutcome | None], ...]
    finished_ns: int
    batch: Pass | None
    generation: int  # the process's generation when the job started (another one: it exec'd meanwhile)


class Agent:
    """The agent's state and its loop; `run()` returns when asked to stop (SIGTERM, SIGINT)."""

    def __init__(self, store: Store, settings: AgentSettings, log: EventLog) -> None:
        self.store = store
        self.settings = settings
        self.log = log
        self.index = BuildIdIndex()
        self.served: dict[str, tuple[StoredPackage, ...]] = {}  # build-id → packages, highest level first
        self._served_ids: dict[str, str] = {}  # package id → sha256 of what is served
        self._refused_logged: dict[str, str] = {}  # path → reason already logged
        self.known: dict[int, dict[str, Knowledge]] = {}  # pid → build-id → knowledge
        self.sizes: dict[int, int] = {}  # pid → its size in pages when its maps were last read
        self._periodic = 0  # periodic passes so far
        self.exec_ns: dict[int, int] = {}  # pid → when it exec'd (CLOCK_MONOTONIC ns), while young
        self.generation: dict[int, int] = {}  # pid → bumped at each exec/exit: older timers are void
        self.in_flight: dict[int, Future[JobResult]] = {}
        self.dirty: set[int] = set()  # checked while a job ran: look again when it ends
        self.timers: list[tuple[float, int, str, int, int]] = []  # (due, seq, kind, pid, generation)
        self._seq = itertools.count()
        self._generations = itertools.count(1)
        self._finished: queue.SimpleQueue[Future[JobResult]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.started = False
        self.stopping = False
        self.reload_requested = False
        self.next_rescan = 0.0
        self.me = os.getpid()
        self.pool = ThreadPoolExecutor(max_workers=max(1, settings.jobs), thread_name_prefix="hpkg-agent")

    # -- the loop -------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; the caller maps an HpkgError raised at start-up to its exit code."""
        previous = self._install_signal_handlers()
        try:
            # Subscribe before the first pass: a process started meanwhile is seen by one or the other.
            directories = [self.store.packages_dir, self.store.keys_dir]
            with ExecEvents() as events, DirectoryWatch(directories) as watch:
                self.reload_store(initial=True)
                self.started = True
                self.log.notice("started", store=str(self.store.root), packages=len(self._served_ids),
                                pid=self.me, jobs=self.settings.jobs, rescan_s=self.settings.rescan_interval)
                self.full_pass("start")
                self._loop(events, watch)
        finally:
            self.shut_down()
            self._restore_signal_handlers(previous)

    def _loop(self, events: ExecEvents, watch: DirectoryWatch) -> None:
        while not self.stopping:
            readable, _, _ = select.select([events, watch, self._wake_read], [], [], self._wait())
            if self._wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_read, 4096):
                        pass
            # Events before results, whether or not select saw them: a job that found a process by a pass
            # may end before its exec event was read, and the exec time goes with the result's log line.
            for event in events.drain():
                self._guarded("event", self.handle_event, event)
            if self.in_flight:
                self.collect_finished()
            if self.stopping:
                break
            if watch in readable and watch.drain():
                time.sleep(STORE_SETTLE)
                watch.drain()
                self.reload_requested = True
            if self.reload_requested:
                self.reload_requested = False
                self._guarded("store", self.reload_store)
            self._run_due_timers()

    def _guarded(self, where: str, action: Callable[..., None], *args: object) -> None:
        """Run one step of the loop; what it raises is logged and the agent goes on serving the others
        (a process or a file on the machine must not stop it). HPKG_DEBUG=1 adds the traceback."""
        try:
            action(*args)
        except HpkgError as exc:
            self.log.error(f"{where}-failed", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug, logged as one: the machine stays served
            self.log.error("internal-error", where=where, error=f"{type(exc).__name__}: {exc}")
            if os.environ.get("HPKG_DEBUG"):
                traceback.print_exc()

    def _wait(self) -> float:
        """Seconds until the next timer or full pass."""
        due = self.next_rescan
        if self.timers:
            due = min(due, self.timers[0][0])
        return max(0.0, due - time.monotonic())

    # -- signals --------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, object]:
        previous: dict[int, object] = {}
        for signum, handler in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                                (signal.SIGHUP, self._on_reload)):
            previous[signum] = signal.signal(signum, handler)
        previous[-1] = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        return previous

    def _restore_signal_handlers(self, previous: dict[int, object]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))  # type: ignore[arg-type]
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def shut_down(self) -> None:
        """Start no job, let the running ones finish (each leaves its target running), log what they did."""
        running = len(self.in_flight)
        if running:
            self.log.notice("stopping", jobs_running=running)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.collect_finished()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        if self.started:
            self.log.notice("stopped")

    # -- the store ------------------------------------------------------------------------------------

    def reload_store(self, initial: bool = False) -> None:
        """Read the store again: log what is new, removed or refused; a new package gets a pass of its own."""
        contents = self.store.contents()
        current = {s.package_id: s for s in contents.packages}
        added = [s for s in contents.packages if self._served_ids.get(s.package_id) != s.sha256]
        for stored in added:
            self.log.info("package-served", package=stored.package_id, level=stored.patch_level,
                          baseline=stored.build_id, signature=stored.signature.value,
                          key=stored.key_id or None)
        for package_id in sorted(set(self._served_ids) - set(current)):
            self.log.info("package-removed", package=package_id)
        refused_now = {str(r.path): r.reason for r in contents.refused}
        for path, reason in refused_now.items():
            if self._refused_logged.get(path) != reason:
                self.log.error("package-refused", file=path, reason=reason)
        self._refused_logged = refused_now
        self._served_ids = {i: s.sha256 for i, s in current.items()}
        self.served = contents.by_build_id()
        if added and not initial:
            fresh = {s.build_id for s in added}
            for knowledge in self.known.values():
                for build_id in fresh:
                    knowledge.pop(build_id, None)
            self.full_pass("package-added")

    # -- events ---------------------------------------------------------------------------------------

    def handle_event(self, event: ProcessEvent | Overrun) -> None:
        """Act on one event of the process connector (called by the loop for each one)."""
        if isinstance(event, Overrun):
            self.log.warning("overrun", action="rescanning every process")
            self.known.clear()
            self.full_pass("overrun")
            return
        if event.pid != event.tgid:
            return  # a thread, not a process
        pid = event.tgid
        if event.kind is EventKind.EXEC:
            self._forget(pid)
            self.exec_ns[pid] = event.timestamp_ns or time.monotonic_ns()
            # The event comes while the dynamic linker is still at work (it takes a millisecond or so):
            # the first look is a millisecond after the exec, by when a short-lived command has often
            # exited already (its exit voids the timer, and it costs nothing more).
            since = (time.monotonic_ns() - self.exec_ns[pid]) / 1e9
            self._schedule(max(0.0, READY_POLL_FIRST - since), "ready:0", pid)
        elif event.kind is EventKind.FORK:
            parent = event.parent_tgid
            if parent in self.known and parent not in self.in_flight:
                # A child starts as a copy of its parent, patches and records included: it knows what the
                # parent knows (asking it would only answer "already applied").
                self.known[pid] = dict(self.known[parent])
            elif parent in self.in_flight:
                self._check(pid)  # forked while its parent was being patched: it may have either state
        elif event.kind is EventKind.EXIT:
            self._forget(pid)
            self.generation.pop(pid, None)  # its timers stay void (generations are never reused)

    def _forget(self, pid: int) -> None:
        self.known.pop(pid, None)
        self.sizes.pop(pid, None)
        self.exec_ns.pop(pid, None)
        self.generation[pid] = next(self._generations)

    def _schedule(self, delay: float, kind: str, pid: int) -> None:
        generation = self.generation.get(pid, 0)
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._seq), kind, pid, generation))

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now and not self.stopping:
            _due, _seq, kind, pid, generation = heapq.heappop(self.timers)
            if self.generation.get(pid, 0) != generation:
                continue  # the process exec'd again or exited since
            if kind == "check":
                self._guarded("check", self._check, pid, None, True)
            elif kind.startswith("ready:"):
                self._guarded("check", self._poll_ready, pid, generation, int(kind.partition(":")[2]))
        if now >= self.next_rescan and not self.stopping:
            self._guarded("pass", self.full_pass, None)

    def _poll_ready(self, pid: int, generation: int, attempt: int) -> None:
        """Look at a young process once its dynamic linker is done (or has had `startup_wait` seconds)."""
        state = startup_state(pid)
        if state is Startup.GONE:
            self._forget(pid)
            return
        age = (time.monotonic_ns() - self.exec_ns.get(pid, time.monotonic_ns())) / 1e9
        if state is Startup.LOADING and age < self.settings.startup_wait:
            delay = min(READY_POLL_FIRST * (2 ** attempt), READY_POLL_LONGEST)
            self._schedule(delay, f"ready:{attempt + 1}", pid)
            return
        self._check(pid)
        for after in self.settings.young_checks:
            if after > age:
                self._schedule(after - age, "check", pid)

    # -- looking at processes -------------------------------------------------------------------------

    def full_pass(self, reason: str | None) -> None:
        """Look at every process of the machine; `reason` names a pass whose summary is logged.

        A periodic pass (no reason) skips a process whose size has not changed since its maps were
        last read (`dlopen` maps new segments: the size grows), except every FULL_MAPS_EVERY-th one,
        which reads every process's maps whatever its size says.
        """
        self.next_rescan = time.monotonic() + self.settings.rescan_interval
        self._periodic += reason is None
        thorough = reason is not None or self._periodic % FULL_MAPS_EVERY == 0
        batch = Pass(reason) if reason else None
        if thorough:
            self.index.begin_full_pass()
        alive = set()
        for pid in process_ids():
            alive.add(pid)
            self._guarded("check", self._check, pid, batch, not thorough)
        if thorough:
            self.index.forget_unseen()
        for pid in [p for p in {*self.sizes, *self.known} if p not in alive]:
            self._forget(pid)
        if batch is not None and batch.outstanding == 0:
            self._log_pass(batch)

    def _check(self, pid: int, batch: Pass | None = None, if_changed: bool = False) -> None:
        """Start a job for `pid` if it maps a served baseline the agent has not seen patched there.

        With `if_changed`, a process whose size (/proc/PID/statm, a tenth of the cost of its maps) is
        what it was when its maps were last read is left alone.
        """
        if pid == self.me or self.stopping or not self.served:
            return
        if pid in self.in_flight:
            self.dirty.add(pid)
            return
        size = _vm_size(pid)  # before the maps: a change after this read is seen next time
        if size is None:
            self._forget(pid)
            return
        if if_changed and self.sizes.get(pid) == size:
            return
        self.sizes[pid] = size
        found = self.index.baselines(pid, self.served)
        if not found:
            if found is None:
                self._forget(pid)
            return
        knowledge = self.known.setdefault(pid, {})
        now = time.monotonic()
        todo: list[StoredPackage] = []
        for build_id in dict.fromkeys(b.build_id for b in found):
            starts = frozenset(b.start for b in found if b.build_id == build_id)
            known = knowledge.get(build_id)
            settled = known is not None and (known.seen is Seen.DONE or known.retry_at > now)
            if settled and starts <= known.starts:
                continue
            todo.extend(self.served.get(build_id, ()))
        if not todo:
            return
        if batch is not None:
            batch.outstanding += 1
        generation = self.generation.get(pid, 0)
        future = self.pool.submit(self._job, pid, found, tuple(todo), batch, generation)
        self.in_flight[pid] = future
        future.add_done_callback(self._job_finished)

    def _job_finished(self, future: Future[JobResult]) -> None:
        """In the worker's thread: hand the result to the loop."""
        self._finished.put(future)
        self._wake()

    def _job(self, pid: int, found: tuple[MappedBaseline, ...], packages: tuple[StoredPackage, ...],
             batch: Pass | None, generation: int) -> JobResult:
        """In a pool thread: apply the packages to `pid`, highest level of each baseline first."""
        outcomes: list[tuple[StoredPackage, ProcessOutcome | None]] = []
        done: set[str] = set()
        for stored in packages:
            if stored.build_id in done:
                continue  # a higher level of this baseline is in place: it contains this one
            with self.store.locked(exclusive=False):
                if not self.store.is_installed(stored):
                    outcomes.append((stored, None))
                    continue
                outcome = apply_to_pid(stored.package, pid, self.settings.timeout)
            outcomes.append((stored, outcome))
            if outcome.outcome is Outcome.GONE:
                break
            if outcome.outcome in (Outcome.APPLIED, Outcome.ALREADY_APPLIED):
                done.add(stored.build_id)
        return JobResult(pid, found, tuple(outcomes), time.monotonic_ns(), batch, generation)

    def collect_finished(self) -> None:
        """Log and remember what the jobs that ended did (the loop calls it whenever one ends)."""
        while True:
            try:
                future = self._finished.get_nowait()
            except queue.Empty:
                return
            if future.cancelled():
                continue
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - the store's lock, or a bug: logged, tried again later
                pid = next((p for p, f in self.in_flight.items() if f is future), 0)
                self.in_flight.pop(pid, None)
                self.log.error("job-failed", pid=pid, error=f"{type(exc).__name__}: {exc}")
                continue
            self.in_flight.pop(result.pid, None)
            self._record(result)
            if self.generation.get(result.pid, 0) != result.generation:
                self.known.pop(result.pid, None)  # it exec'd (or ended) meanwhile: what was learnt is void
                self.dirty.add(result.pid)
            if result.batch is not None:
                result.batch.outstanding -= 1
                if result.batch.outstanding == 0:
                    self._log_pass(result.batch)
            if result.pid in self.dirty:
                self.dirty.discard(result.pid)
                self._check(result.pid)

    def _record(self, result: JobResult) -> None:
        """Log each outcome and remember, per baseline, whether its highest level is in place."""
        pid = result.pid
        exec_ns = self.exec_ns.get(pid)
        since_exec = (result.finished_ns - exec_ns) / 1e6 if exec_ns else None
        best: dict[str, Outcome] = {}
        for stored, outcome in result.outcomes:
            counts = result.batch.counts if result.batch is not None else {}
            if outcome is None:
                self.log.debug("skipped", pid=pid, package=stored.package_id, reason="uninstalled meanwhile")
                continue
            counts[outcome.outcome.value] = counts.get(outcome.outcome.value, 0) + 1
            self._log_outcome(stored, outcome, since_exec)
            # The first outcome of a baseline is its highest level's: a lower level applied after the
            # highest was refused is better than nothing, but the highest is still to be tried again.
            best.setdefault(stored.build_id, outcome.outcome)
        if any(o is Outcome.GONE for o in best.values()):
            self._forget(pid)
            return
        knowledge = self.known.setdefault(pid, {})
        for build_id, outcome in best.items():
            starts = frozenset(b.start for b in result.baselines if b.build_id == build_id)
            if outcome is Outcome.REFUSED:
                attempts = knowledge[build_id].attempts + 1 if build_id in knowledge else 1
                delay = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_LONGEST)
                knowledge[build_id] = Knowledge(starts, Seen.REFUSED, time.monotonic() + delay, attempts)
            else:
                knowledge[build_id] = Knowledge(starts, Seen.DONE)

    def _log_outcome(self, stored: StoredPackage, outcome: ProcessOutcome, since_exec: float | None) -> None:
        fields: dict[str, object] = {
            "pid": outcome.pid, "command": outcome.command, "image": outcome.image or None,
            "package": stored.package_id, "level": stored.patch_level,
        }
        kind = outcome.outcome
        if kind is Outcome.APPLIED:
            self.log.info("applied", **fields, pause_ms=outcome.pause_ms, exec_to_patched_ms=since_exec)
        elif kind is Outcome.ALREADY_APPLIED:
            self.log.debug("already-applied", **fields, reason=outcome.reason or None)
        elif kind is Outcome.REFUSED:
            self.log.warning("refused", **fields, reason=outcome.reason)
        elif kind is Outcome.GONE:
            self.log.info("gone", **fields, reason=outcome.reason or None)

    def _log_pass(self, batch: Pass) -> None:
        counts = {key.replace(" ", "_"): n for key, n in sorted(batch.counts.items())}
        self.log.notice("pass-done", reason=batch.reason, **counts)

