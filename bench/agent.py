"""`python -m bench.agent`: how soon `hpkg agent` patches a process that starts, and what it costs idle.

Everything is measured in one run, each figure beside a peer:

- **exec → patched**: N baseline processes are started one after the other under a running agent,
  alternating the threaded server (the executable is the baseline) and the shared-library host (the
  library is, mapped by the dynamic linker after the exec). The agent's own figure is from the
  kernel's exec timestamp (the process connector's, CLOCK_MONOTONIC) to the end of its apply; the
  bench's is from just before it forks the process to the moment it reads the agent's `applied`
  line. Every process must then answer the fixed way. The peer is what an operator would do without
  an agent: start the process and run `hpkg apply --pid` at once (a hook script), timed from the
  fork to the command's exit, on a second copy of the programs that the agent's store does not know.
- **idle CPU**: the agent's CPU time (utime + stime) over a quiet window, as a percentage of one
  core, beside a poller that scans every process's maps for the same baselines once a second (what
  an agent without exec events would need for a one-second latency), run over the same window. The
  machine's own exec rate over the window is counted too: the agent looks at every exec.
- **per process event**: the agent's CPU time over the quiet window divided by the process events
  (forks, execs, exits, threads' included) the machine made in it: each wakes the agent (an upper
  bound: it includes the periodic passes).
- **a full pass**: the time of one pass over every process's maps with warm build-id memory, the
  periodic work behind late `dlopen` (every 5 s by default).

Samples are compiled with build-ids of their own (a random `--build-id`): the agent patches every
matching process of the machine, and must meet only the bench's.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples"
READY_FLAGS = (
    "-O2", "-g", "-fno-omit-frame-pointer", "-flive-patching=inline-clone", "-fcf-protection=none",
    "-Wall", "-Wno-format-security", "-Wl,--emit-relocs",
)  # fmt: skip
DEADLINE = 60.0  # a safety net for a line or an answer that must come, not a timing bound


class BenchError(Exception):
    """The bench could not set up or measure; the message says what."""


@dataclass(frozen=True)
class Summary:
    """Median and maximum of a measured quantity, with every sample."""

    median: float
    maximum: float
    samples: tuple[float, ...]

    @staticmethod
    def of(samples: list[float]) -> Summary:
        return Summary(round(statistics.median(samples), 3), round(max(samples), 3),
                       tuple(round(s, 3) for s in samples))


@dataclass(frozen=True)
class Programs:
    """The server and the library sample, baseline and fix, compiled with build-ids of their own."""

    server: Path
    server_fixed: Path
    library_dir: Path  # holds libpct.so.1 (baseline)
    library_fixed_dir: Path
    host: Path


@dataclass
class AgentFigures:
    """Everything one run measured."""

    starts: int = 0
    exec_to_patched_ms: dict[str, Summary] = field(default_factory=dict)  # by kind, and "all"
    fork_to_log_ms: dict[str, Summary] = field(default_factory=dict)
    peer_fork_to_patched_ms: dict[str, Summary] = field(default_factory=dict)
    wrong_answers: int = 0
    idle_seconds: float = 0.0
    idle_cpu_percent: float = 0.0
    poller_cpu_percent: float = 0.0
    machine_execs_per_second: float = 0.0
    machine_events_per_second: float = 0.0  # every fork, exec and exit, threads' included
    cpu_us_per_event: float = 0.0  # the agent's CPU over the idle window per process event
    full_pass_ms: Summary | None = None
    processes: int = 0
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()


def _gcc(*args: str | Path) -> None:
    done = subprocess.run(["gcc", *READY_FLAGS, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"gcc failed: {done.stderr.strip()[-300:]}")


def _build_id() -> str:
    return f"-Wl,--build-id=0x{secrets.token_hex(20)}"


def compile_programs(out: Path) -> Programs:
    """samples/14-threaded-server and 16-shared-library (with its host) under `out`, fresh build-ids."""
    out.mkdir(parents=True)
    server_src = SAMPLES_DIR / "14-threaded-server" / "sample.c"
    library_src = SAMPLES_DIR / "16-shared-library"
    server, server_fixed = out / "server.baseline", out / "server.fixed"
    _gcc(_build_id(), "-pthread", "-o", server, server_src)
    _gcc(_build_id(), "-pthread", "-DFIX", "-o", server_fixed, server_src)
    dirs = out / "baseline", out / "fixed"
    for directory, define in zip(dirs, ((), ("-DFIX",)), strict=True):
        directory.mkdir()
        _gcc(*define, _build_id(), "-fPIC", "-shared", "-Wl,-soname,libpct.so.1", "-o",
             directory / "libpct.so.1", library_src / "pct.c")
    host = out / "host"
    _gcc(f"-I{library_src}", "-o", host, library_src / "host.c", f"-L{dirs[0]}", "-l:libpct.so.1")
    return Programs(server, server_fixed, dirs[0], dirs[1], host)


def hpkg(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpkg", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=DEADLINE * 5)


def build_packages(programs: Programs, out: Path, key: Path, env: dict[str, str]) -> dict[str, Path]:
    """A signed package for the server and for the library."""
    pairs = {"server": (programs.server, programs.server_fixed),
             "library": (programs.library_dir / "libpct.so.1", programs.library_fixed_dir / "libpct.so.1")}
    built = {}
    for kind, (old, new) in pairs.items():
        path = out / f"{kind}.hpkg"
        done = hpkg("build", old, new, "-o", path, "--key", key, env=env)
        if done.returncode != 0:
            raise BenchError(f"hpkg build {kind}: {done.stderr.strip()[-300:]}")
        built[kind] = path
    return built


class Target:
    """A started baseline process: the server (TCP) or the library host (stdin/stdout)."""

    def __init__(self, kind: str, programs: Programs) -> None:
        self.kind = kind
        if kind == "server":
            self.process = subprocess.Popen([str(programs.server), "0"], stdout=subprocess.PIPE, text=True)
        else:
            env = {**os.environ, "LD_LIBRARY_PATH": str(programs.library_dir)}
            self.process = subprocess.Popen([str(programs.host)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True, env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def answers_fixed(self) -> bool:
        """Ask the request whose answer differs between the builds; whether the fix answered."""
        assert self.process.stdout is not None
        if self.kind == "server":
            port = int(self.process.stdout.readline().split()[-1])
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as connection:
                connection.sendall(b"GET /" + b"x" * 40 + b"\n")
                return connection.makefile().readline().startswith("414 ")
        assert self.process.stdin is not None
        self.process.stdin.write("decode evil.php%00.jpg\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().startswith("error: malformed")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


class AgentProcess:
    """`hpkg agent` in a subprocess; its `applied` lines, each with the moment the bench read it."""

    def __init__(self, env: dict[str, str], stderr: Path) -> None:
        from hpkg.loader.agent_log import parse_line

        self._parse = parse_line
        self.stderr = stderr
        argv = [sys.executable, "-m", "hpkg", "agent"]
        with open(stderr, "w") as errors:
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        self.applied: dict[int, tuple[float, int]] = {}  # pid → (exec_to_patched_ms, read at, ns)
        self.lines: list[str] = []
        self.started = threading.Event()
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.started.wait(DEADLINE):
            self.process.kill()
            raise BenchError(f"the agent did not start: {stderr.read_text().strip()}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            read_at = time.monotonic_ns()
            self.lines.append(line.rstrip("\n"))
            _priority, event, fields = self._parse(line)
            if event == "started":
                self.started.set()
            elif event == "applied" and "exec_to_patched_ms" in fields:
                with self._changed:
                    self.applied[int(fields["pid"])] = (float(fields["exec_to_patched_ms"]), read_at)
                    self._changed.notify_all()

    def wait_applied(self, pid: int) -> tuple[float, int]:
        deadline = time.monotonic() + DEADLINE
        with self._changed:
            while pid not in self.applied:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    about = [line for line in self.lines if f"pid={pid} " in line or "pass-done" in line]
                    raise BenchError(f"the agent never reported process {pid} patched; its lines about it:"
                                     f" {about[-10:]}; its stderr: {self.stderr.read_text()[-2000:]}")
                self._changed.wait(0.5)
            return self.applied[pid]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=DEADLINE)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat fields 14 and 15), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


POLLER = """
import sys, time
from hpkg.loader.affected import scan_for_baselines
wanted = sys.argv[1:]
scan_for_baselines(wanted)
print("ready", flush=True)
while True:
    next_tick = time.monotonic() + 1.0
    scan_for_baselines(wanted)
    time.sleep(max(0.0, next_tick - time.monotonic()))
"""


def measure(starts: int, peer_starts: int, idle: float, workdir: Path) -> AgentFigures:
    """Set up a store and an agent in `workdir`, then take every figure (see the module's docstring)."""
    from hpkg.elf.file import read_build_id
    from hpkg.loader.mapped_files import BuildIdIndex, process_ids

    figures = AgentFigures(starts=starts, load_before=os.getloadavg())
    env = {**os.environ, **{name: str(workdir / name.lower()) for name in
                            ("HPKG_STORE", "HPKG_STATE_DIR", "HPKG_RUN_DIR")}}
    key = workdir / "key"
    if hpkg("keygen", key, env=env).returncode != 0:
        raise BenchError("hpkg keygen failed")
    served = compile_programs(workdir / "served")
    served_packages = build_packages(served, workdir / "served", key, env)
    if peer_starts:  # a second copy, which the agent does not serve
        peer = compile_programs(workdir / "peer")
        peer_packages = build_packages(peer, workdir / "peer", key, env)
    for path in served_packages.values():
        done = hpkg("install", path, "--key", f"{key}.pub", env=env)
        if done.returncode != 0:
            raise BenchError(f"hpkg install: {done.stderr.strip()}")

    agent = AgentProcess(env, workdir / "agent.stderr")
    try:
        by_kind: dict[str, list[float]] = {"server": [], "library": []}
        fork_to_log: dict[str, list[float]] = {"server": [], "library": []}
        peer_times: dict[str, list[float]] = {"server": [], "library": []}
        peer_rounds = {int(i * starts / peer_starts) for i in range(peer_starts)} if peer_starts else set()
        for number in range(starts):
            kind = ("server", "library")[number % 2]
            forked = time.monotonic_ns()
            target = Target(kind, served)
            try:
                exec_to_patched, read_at = agent.wait_applied(target.pid)
                by_kind[kind].append(exec_to_patched)
                fork_to_log[kind].append((read_at - forked) / 1e6)
                figures.wrong_answers += not target.answers_fixed()
            finally:
                target.stop()
            if number in peer_rounds:  # interleaved: the same machine state for both
                peer_times[kind].append(_peer_round(kind, peer, peer_packages[kind], key, env, figures))
        figures.exec_to_patched_ms = _summaries(by_kind)
        figures.fork_to_log_ms = _summaries(fork_to_log)
        figures.peer_fork_to_patched_ms = _summaries(peer_times)

        # A quiet window: the agent against the once-a-second poller, the machine's execs counted.
        baselines = (served.server, served.library_dir / "libpct.so.1")
        wanted = [read_build_id(p.read_bytes()).hex() for p in baselines]
        poller = subprocess.Popen([sys.executable, "-c", POLLER, *wanted], stdout=subprocess.PIPE,
                                  text=True, env=env)
        try:
            assert poller.stdout is not None and poller.stdout.readline() == "ready\n"
            figures.idle_seconds = idle
            agent_before, poller_before = agent.cpu_seconds(), cpu_seconds(poller.pid)
            execs, events = _count_execs(idle)
            spent = agent.cpu_seconds() - agent_before
            figures.idle_cpu_percent = round(spent / idle * 100, 3)
            figures.poller_cpu_percent = round((cpu_seconds(poller.pid) - poller_before) / idle * 100, 3)
            figures.machine_execs_per_second = round(execs / idle, 2)
            figures.machine_events_per_second = round(events / idle, 2)
            figures.cpu_us_per_event = round(spent / events * 1e6, 1) if events else 0.0
        finally:
            poller.kill()
            poller.wait()
    finally:
        agent.stop()

    index, pids = BuildIdIndex(), process_ids()
    for pid in pids:
        index.baselines(pid, wanted)
    passes = []
    for _ in range(20):
        began = time.perf_counter()
        for pid in process_ids():
            index.baselines(pid, wanted)
        passes.append((time.perf_counter() - began) * 1000)
    figures.full_pass_ms = Summary.of(passes)
    figures.processes = len(pids)
    figures.load_after = os.getloadavg()
    return figures


def _peer_round(kind: str, programs: Programs, package: Path, key: Path, env: dict[str, str],
                figures: AgentFigures) -> float:
    """Start a process of the copy the agent does not serve and `hpkg apply --pid` it at once."""
    forked = time.monotonic_ns()
    target = Target(kind, programs)
    try:
        done = hpkg("apply", package, "--pid", target.pid, "--key", f"{key}.pub", env=env)
        patched = time.monotonic_ns()
        if done.returncode != 0:
            raise BenchError(f"peer hpkg apply --pid: {done.stderr.strip()[-300:]}")
        figures.wrong_answers += not target.answers_fixed()
        return (patched - forked) / 1e6
    finally:
        target.stop()


def _summaries(samples: dict[str, list[float]]) -> dict[str, Summary]:
    every = [s for values in samples.values() for s in values]
    out = {kind: Summary.of(values) for kind, values in samples.items() if values}
    if every:
        out["all"] = Summary.of(every)
    return out


def _count_execs(seconds: float) -> tuple[int, int]:
    """The machine's execs, and all its process events, over `seconds` (the process connector, as the
    agent sees them)."""
    from hpkg.loader.exec_events import EventKind, ExecEvents, ProcessEvent

    execs, every, deadline = 0, 0, time.monotonic() + seconds
    with ExecEvents() as events:
        while (left := deadline - time.monotonic()) > 0:
            for event in events.events(timeout=left):
                every += 1
                if isinstance(event, ProcessEvent) and event.kind is EventKind.EXEC:
                    execs += 1
                if time.monotonic() >= deadline:
                    break
    return execs, every


def to_markdown(figures: AgentFigures) -> str:
    """The tables of bench/RESULTS.md."""
    lines = ["| start | processes | agent: exec → patched, median | max | bench: fork → `applied` read,"
             " median | peer `hpkg apply --pid` right after start, median | ratio (peer / agent) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind in ("server", "library", "all"):
        agent, seen = figures.exec_to_patched_ms.get(kind), figures.fork_to_log_ms.get(kind)
        peer = figures.peer_fork_to_patched_ms.get(kind)
        if agent is None or seen is None:
            continue
        peer_text = f"{peer.median:.1f} ms ({len(peer.samples)})" if peer else "-"
        ratio = f"{peer.median / seen.median:.1f}x" if peer else "-"
        lines.append(f"| {kind} | {len(agent.samples)} | {agent.median:.1f} ms | {agent.maximum:.1f} ms |"
                     f" {seen.median:.1f} ms | {peer_text} | {ratio} |")
    lines += [
        "",
        "| idle window | agent CPU | poller (all maps once a second) CPU | ratio | machine execs/s |"
        " process events/s |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {figures.idle_seconds:.0f} s | {figures.idle_cpu_percent:.3f} % of a core |"
        f" {figures.poller_cpu_percent:.3f} % | "
        f"{(figures.poller_cpu_percent / figures.idle_cpu_percent) if figures.idle_cpu_percent else 0:.1f}x |"
        f" {figures.machine_execs_per_second:.1f} | {figures.machine_events_per_second:.1f} |",
        "",
        f"- agent CPU per process event of the machine in the window (periodic passes included):"
        f" {figures.cpu_us_per_event:.0f} µs",
    ]
    if figures.full_pass_ms is not None:
        full = figures.full_pass_ms
        lines.append(f"- one full pass over {figures.processes} processes' maps (warm build-id memory):"
                     f" median {full.median:.2f} ms, max {full.maximum:.2f} ms")
    lines.append(f"- wrong answers after `applied`: {figures.wrong_answers}; load average before"
                 f" {' '.join(f'{x:.2f}' for x in figures.load_before)}, after"
                 f" {' '.join(f'{x:.2f}' for x in figures.load_after)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=50, help="processes started under the agent (50)")
    parser.add_argument("--peer-starts", type=int, default=10, help="peer rounds, `hpkg apply --pid` (10)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window (60)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--workdir", type=Path, help="keep programs, packages and the store here")
    arguments = parser.parse_args(argv)
    if arguments.starts < 2 or arguments.peer_starts < 0 or arguments.idle <= 0:
        parser.error("--starts must be at least 2, --peer-starts not negative, --idle positive")
    if os.geteuid() != 0:
        parser.error("the agent needs root (ptrace, the kernel's process connector)")
    with tempfile.TemporaryDirectory(prefix="hpkg-bench-agent-") as scratch:
        workdir = arguments.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o700)
        try:
            figures = measure(arguments.starts, arguments.peer_starts, arguments.idle, workdir)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(asdict(figures), indent=2) if arguments.json else to_markdown(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
