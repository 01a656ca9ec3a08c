"""One bench run: make each pair available and measure it (speed, changes, deltas, build), then the pause."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import corpus, engine
from bench.bytecompare import ByteCompare, compare_bytes, load_code
from bench.deltas import DeltaResult, make_deltas
from bench.load import LoadResult
from bench.machine import MachineResult
from bench.memory import MemoryUse, measure
from bench.objdiff import changed_functions
from bench.pause import PauseResult
from bench.timing import Timing, interleaved_medians

OBJDUMP = "objdump -d (both files)"
HPKG_IN_PROCESS = "hpkg diff (in-process)"
HPKG_CLI = "hpkg diff (CLI)"
BUILD_IN_PROCESS = "hpkg build (in-process)"
BUILD_CLI = "hpkg build (CLI)"
# Each build timing and the diff timing it is compared with (goal of issue 9: build <= 1.2x diff).
BUILD_VS_DIFF = {BUILD_IN_PROCESS: HPKG_IN_PROCESS, BUILD_CLI: HPKG_CLI}
# The pair whose size tests how hpkg scales (>= 100 MB); measured only when selected by name or role.
SCALE = "scale"


@dataclass(frozen=True)
class Settings:
    """How much to measure: timing rounds per pair role, and where files go."""

    runs: dict[str, int]
    workdir: Path
    cache: Path
    download: bool = True


@dataclass(frozen=True)
class Speed:
    """Interleaved medians for one pair: hpkg's diff as a ratio to objdump, its build as a ratio to
    its diff (in-process build / in-process diff, CLI build / CLI diff), where they ran."""

    runs: int
    timings: dict[str, Timing]
    ratios: dict[str, float]
    not_measured: dict[str, str]
    build_ratios: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory of one hpkg command on a pair, in bytes: medians over fresh runs (bench/memory.py)."""

    max_rss: int  # the largest single process (parent or forked child), as /usr/bin/time -v reports it
    tree_peak: int | None  # the process tree's sampled sum of PSS
    runs: tuple[MemoryUse, ...]


@dataclass(frozen=True)
class MaskedCompare:
    """Named functions whose objdump listings differ with addresses masked (bench/objdiff.py)."""

    common: int
    changed: int
    changed_names: frozenset[str]
    common_names: frozenset[str]


@dataclass(frozen=True)
class Agreement:
    """Where hpkg's changed set and the masked objdump compare disagree, over named functions."""

    hpkg_changed_named: int
    only_hpkg: tuple[str, ...]  # reported by hpkg, same masked listing: a moved reference, or noise
    only_hpkg_kinds: dict[str, int]  # hpkg's change kinds of those
    only_objdump: tuple[str, ...]  # masked listing differs, hpkg says unchanged: worth a look


@dataclass(frozen=True)
class TouchedCheck:
    """Whether the functions a patch touched show up in hpkg's report and in the byte compare."""

    touched: tuple[str, ...]
    named: tuple[str, ...]  # touched functions that have a symbol in old or new (checkable by name)
    code_changed: tuple[str, ...]  # named ones added, or whose masked objdump listing differs
    flagged_by_byte_compare: tuple[str, ...]
    reported_by_hpkg: tuple[str, ...] | None
    missed_by_hpkg: tuple[str, ...] | None  # code changed, yet not in hpkg's report
    same_code_unreported: tuple[str, ...] | None  # touched in source, same code, rightly not reported
    hpkg_others: int | None  # changed + added functions hpkg reported beyond the touched ones


@dataclass(frozen=True)
class PairResult:
    """Everything one run measured for one pair; fields are None where a stage could not run."""

    name: str
    role: str
    old: str = ""
    new: str = ""
    old_label: str = ""
    new_label: str = ""
    old_size: int = 0
    new_size: int = 0
    error: str | None = None
    speed: Speed | None = None
    byte_compare: ByteCompare | None = None
    masked_compare: MaskedCompare | None = None
    agreement: Agreement | None = None
    hpkg_diff: engine.DiffReport | None = None
    hpkg_diff_error: str | None = None
    touched: TouchedCheck | None = None
    deltas: tuple[DeltaResult, ...] = ()
    hpkg_build: engine.BuildReport | None = None
    hpkg_build_error: str | None = None
    build_in_process: Timing | None = None  # the same build without the interpreter start
    memory: dict[str, PeakMemory] = field(default_factory=dict)  # by command: HPKG_CLI, BUILD_CLI
    memory_not_measured: dict[str, str] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        """The larger of the two input files, the unit of the peak-memory goal (issue 9: <= 4x)."""
        return max(self.old_size, self.new_size)


@dataclass(frozen=True)
class BenchResult:
    """One whole run: when, where, what was available, and every pair's result."""

    date: str
    machine: dict[str, str]
    engine: engine.EngineStatus
    pairs: tuple[PairResult, ...] = field(default_factory=tuple)
    pause: tuple[PauseResult, ...] = field(default_factory=tuple)
    load: tuple[LoadResult, ...] = field(default_factory=tuple)
    machine_wide: tuple[MachineResult, ...] = field(default_factory=tuple)


def machine_facts() -> dict[str, str]:
    """CPU, kernel and tool versions, so figures from different machines are not mixed up."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def first_line(argv: list[str]) -> str:
        if shutil.which(argv[0]) is None:
            return "not installed"
        done = subprocess.run(argv, capture_output=True, text=True)
        return ((done.stdout or done.stderr).strip().splitlines() or [""])[0]

    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "objdump": first_line(["objdump", "--version"]),
        "xdelta3": first_line(["xdelta3", "-V"]),
        "zstd": first_line(["zstd", "-V"]),
    }


def _objdump_both(old: Path, new: Path):
    def task() -> None:
        for path in (old, new):
            argv = ["objdump", "-d", str(path)]
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

    return task


def _guarded(task, name: str, failures: dict[str, str]):
    """`task` as a timing task that records an exception as a finding instead of ending the bench."""

    def run() -> None:
        try:
            task()
        except Exception as exc:  # the engine is what is measured: a crash is a finding for the report
            failures[name] = f"failed: {exc.__class__.__name__}: {exc}"

    return run


def measure_speed(
    pair: corpus.Pair,
    status: engine.EngineStatus,
    runs: int,
    package: Path | None = None,
    in_process: bool = True,
) -> tuple[Speed, list]:
    """Time objdump, hpkg diff and (given a `package` path to write) hpkg build on the pair in turns;
    also return the diff CLI's last output. `in_process=False` leaves out the runs inside the bench's
    own interpreter (the scale pair: gigabytes that would stay in the bench process)."""
    tasks = {OBJDUMP: _objdump_both(pair.old, pair.new)}
    not_measured: dict[str, str] = {}
    cli_outputs: list[subprocess.CompletedProcess[str]] = []
    build_outputs: list[subprocess.CompletedProcess[str]] = []
    failures: dict[str, str] = {}
    skipped = "not run on this pair: it would stay in the bench's own process"
    if not in_process:
        not_measured[HPKG_IN_PROCESS] = skipped
    elif status.in_process_diff is None:
        diff = engine.in_process_diff(pair.old, pair.new)
        tasks[HPKG_IN_PROCESS] = _guarded(diff, HPKG_IN_PROCESS, failures)
    else:
        not_measured[HPKG_IN_PROCESS] = status.in_process_diff
    if status.cli_diff is None:
        tasks[HPKG_CLI] = lambda: cli_outputs.append(engine.cli_diff(pair.old, pair.new))
    else:
        not_measured[HPKG_CLI] = status.cli_diff
    if package is not None and status.cli_build is None:
        if in_process:
            build = engine.in_process_build(pair.old, pair.new)
            tasks[BUILD_IN_PROCESS] = _guarded(build, BUILD_IN_PROCESS, failures)
        tasks[BUILD_CLI] = lambda: build_outputs.append(engine.cli_build_run(pair.old, pair.new, package))
    elif package is not None:
        not_measured[BUILD_IN_PROCESS] = not_measured[BUILD_CLI] = status.cli_build
    timings = interleaved_medians(tasks, runs)
    if cli_outputs and cli_outputs[-1].returncode not in (0, engine.EXIT_NO_CHANGE):
        failures[HPKG_CLI] = f"failed: exit {cli_outputs[-1].returncode}"
    if build_outputs and build_outputs[-1].returncode not in engine.BUILD_ANSWERS:
        failures[BUILD_CLI] = f"failed: exit {build_outputs[-1].returncode}"
    for name, reason in failures.items():
        del timings[name]
        not_measured[name] = reason
    base = timings[OBJDUMP].median
    diffs = (HPKG_IN_PROCESS, HPKG_CLI)
    ratios = {name: timings[name].median / base for name in diffs if name in timings and base > 0}
    build_ratios = {
        build: timings[build].median / timings[diff].median
        for build, diff in BUILD_VS_DIFF.items()
        if build in timings and diff in timings and timings[diff].median > 0
    }
    return Speed(runs, timings, ratios, not_measured, build_ratios), cli_outputs


def measure_memory(
    pair: corpus.Pair, status: engine.EngineStatus, runs: int, package: Path | None
) -> tuple[dict[str, PeakMemory], dict[str, str]]:
    """Peak memory of `hpkg diff` and (given a `package` path) `hpkg build` through the CLI, each run
    in a fresh wrapper process, in turns; medians over `runs` rounds. Also why a command has no figure."""
    commands: dict[str, list[str]] = {}
    not_measured: dict[str, str] = {}
    if status.cli_diff is None:
        commands[HPKG_CLI] = engine.diff_command(pair.old, pair.new)
    else:
        not_measured[HPKG_CLI] = status.cli_diff
    if package is not None and status.cli_build is None:
        commands[BUILD_CLI] = engine.build_command(pair.old, pair.new, package)
    elif package is not None:
        not_measured[BUILD_CLI] = status.cli_build
    used: dict[str, list[MemoryUse]] = {name: [] for name in commands}
    names = list(commands)
    for round_index in range(runs):
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            used[name].append(measure(commands[name]))
    answers = {HPKG_CLI: (0, engine.EXIT_NO_CHANGE), BUILD_CLI: engine.BUILD_ANSWERS}
    memory: dict[str, PeakMemory] = {}
    for name, uses in used.items():
        failed = [u.returncode for u in uses if u.returncode not in answers[name]]
        if failed:
            not_measured[name] = f"failed: exit {failed[-1]}"
            continue
        trees = [u.tree_peak for u in uses if u.tree_peak is not None]
        tree_peak = int(statistics.median(trees)) if trees else None
        memory[name] = PeakMemory(int(statistics.median(u.max_rss for u in uses)), tree_peak, tuple(uses))
    return memory, not_measured


def check_touched(
    spec: corpus.PairSpec, compared: ByteCompare, masked: MaskedCompare, report: engine.DiffReport | None
) -> TouchedCheck:
    """Compare the patch's touched functions with hpkg's report, objdump and the byte compare."""
    named = tuple(name for name in spec.touched if name in compared.function_names)
    added = compared.added_names
    code_changed = tuple(name for name in named if name in masked.changed_names or name in added)
    flagged = tuple(name for name in named if name in compared.differing_names or name in added)
    if report is None:
        return TouchedCheck(spec.touched, named, code_changed, flagged, None, None, None, None)
    reported = set(report.changed) | set(report.added) | set(report.removed)
    return TouchedCheck(
        touched=spec.touched,
        named=named,
        code_changed=code_changed,
        flagged_by_byte_compare=flagged,
        reported_by_hpkg=tuple(name for name in named if name in reported),
        missed_by_hpkg=tuple(name for name in code_changed if name not in reported),
        same_code_unreported=tuple(n for n in named if n not in reported and n not in code_changed),
        hpkg_others=len((set(report.changed) | set(report.added)) - set(spec.touched)),
    )


def compare_code(pair: corpus.Pair) -> tuple[ByteCompare, MaskedCompare]:
    """The two baselines hpkg is measured against: raw bytes, and objdump with addresses masked."""
    old, new = load_code(pair.old), load_code(pair.new)
    compared = compare_bytes(old, new)
    changed = changed_functions(pair.old, pair.new, old.symbols, new.symbols)
    common = frozenset(old.symbols.keys() & new.symbols.keys())
    return compared, MaskedCompare(len(common), len(changed), changed, common)


def agree(masked: MaskedCompare, report: engine.DiffReport) -> Agreement:
    """Compare hpkg's changed functions with the masked objdump compare, by name."""
    hpkg = set(report.changed) & masked.common_names
    only_hpkg = tuple(sorted(hpkg - masked.changed_names))
    return Agreement(
        hpkg_changed_named=len(hpkg),
        only_hpkg=only_hpkg,
        only_hpkg_kinds=dict(Counter(report.kind_by_name.get(name, "?") for name in only_hpkg)),
        only_objdump=tuple(sorted(masked.changed_names - hpkg)),
    )


def _build(
    pair: corpus.Pair, package: Path, status: engine.EngineStatus, runs: int, timed: Timing | None = None
) -> tuple[engine.BuildReport | None, str | None, Timing | None]:
    """`hpkg build` of the pair through the CLI, and its in-process time (median of `runs`, or the
    `timed` rounds the speed measurement already took); or why there is no figure for it."""
    if status.cli_build is not None:
        return None, status.cli_build, None
    try:
        report = engine.cli_build(pair.old, pair.new, package)
    except engine.EngineError as exc:
        return None, str(exc), None
    if timed is not None:
        return report, None, timed
    failures: dict[str, str] = {}
    task = _guarded(engine.in_process_build(pair.old, pair.new), "build", failures)
    timing = interleaved_medians({"build": task}, runs)["build"]
    return report, None, None if failures else timing


def _pair_result(
    spec: corpus.PairSpec,
    pair: corpus.Pair,
    deltas: list[DeltaResult],
    built: tuple[engine.BuildReport | None, str | None, Timing | None],
    **stages: object,
) -> PairResult:
    """The result of a measured pair: its files, deltas and build, plus whatever other `stages` ran."""
    build, build_error, in_process = built
    return PairResult(
        name=spec.name,
        role=spec.role,
        old=str(pair.old),
        new=str(pair.new),
        old_label=pair.old_label,
        new_label=pair.new_label,
        old_size=pair.old.stat().st_size,
        new_size=pair.new.stat().st_size,
        deltas=tuple(deltas),
        hpkg_build=build,
        hpkg_build_error=build_error,
        build_in_process=in_process,
        **stages,  # type: ignore[arg-type]
    )


def run_sample_pair(spec: corpus.PairSpec, settings: Settings, status: engine.EngineStatus) -> PairResult:
    """A pair of the samples corpus: only the deltas and `hpkg build` (the diff is checked by tests)."""
    try:
        pair = corpus.build_sample_pair(spec)
    except corpus.CorpusError as exc:
        return PairResult(spec.name, spec.role, error=str(exc))
    pairdir = settings.workdir / "samples" / spec.name
    runs = settings.runs[spec.role]
    deltas = make_deltas(pair.old, pair.new, pairdir / "deltas", runs)
    return _pair_result(spec, pair, deltas, _build(pair, pairdir / "fix.hpkg", status, runs))


def run_scale_pair(
    spec: corpus.PairSpec, pair: corpus.Pair, settings: Settings, status: engine.EngineStatus
) -> PairResult:
    """The scale pair (>= 100 MB): objdump and `hpkg diff` through the CLI in turns, and the diff's
    peak memory. Nothing else: the byte compare, the deltas and the build would take many minutes
    and gigabytes more at this size, and the other pairs measure them."""
    runs = settings.runs[spec.role]
    try:
        speed, cli_outputs = measure_speed(pair, status, runs, in_process=False)
    except subprocess.CalledProcessError as exc:
        return PairResult(spec.name, spec.role, error=f"cannot compare the pair: {exc}")
    memory, memory_not_measured = measure_memory(pair, status, settings.runs["memory"], None)
    report, report_error = _diff_report(status, cli_outputs)
    return _pair_result(
        spec,
        pair,
        [],
        (None, "not run on the scale pair", None),
        speed=speed,
        hpkg_diff=report,
        hpkg_diff_error=report_error,
        memory=memory,
        memory_not_measured=memory_not_measured,
    )


def _diff_report(
    status: engine.EngineStatus, cli_outputs: list[subprocess.CompletedProcess[str]]
) -> tuple[engine.DiffReport | None, str | None]:
    """What the last `hpkg diff --json` of the speed rounds reported, or why there is no report."""
    if status.cli_diff is not None:
        return None, status.cli_diff
    try:
        return engine.parse_diff(cli_outputs[-1]), None
    except engine.EngineError as exc:
        return None, str(exc)


def run_pair(spec: corpus.PairSpec, settings: Settings, status: engine.EngineStatus) -> PairResult:
    """Measure one pair from start to end; a failing stage is recorded, not raised."""
    if spec.role == "sample":
        return run_sample_pair(spec, settings, status)
    slug = "".join(c if c.isalnum() else "-" for c in spec.name).strip("-")
    pairdir = settings.workdir / slug
    pairdir.mkdir(parents=True, exist_ok=True)
    try:
        if spec.role == "small":
            pair = corpus.build_small_pair(spec, pairdir)
        elif settings.download:
            pair = corpus.fetch_debian_pair(spec, settings.cache)
        else:
            raise corpus.CorpusError("downloads disabled (--no-download)")
    except corpus.CorpusError as exc:
        return PairResult(spec.name, spec.role, error=str(exc))
    if spec.role == SCALE:
        return run_scale_pair(spec, pair, settings, status)
    runs = settings.runs[spec.role]
    try:
        speed, cli_outputs = measure_speed(pair, status, runs, pairdir / "timed.hpkg")
        compared, masked = compare_code(pair)
    except (subprocess.CalledProcessError, ValueError) as exc:
        return PairResult(spec.name, spec.role, error=f"cannot compare the pair: {exc}")
    memory, memory_not_measured = measure_memory(pair, status, settings.runs["memory"], pairdir / "mem.hpkg")
    report, report_error = _diff_report(status, cli_outputs)
    slow_runs = runs if spec.role == "small" else 1  # only small pairs repeat the deltas
    deltas = make_deltas(pair.old, pair.new, pairdir / "deltas", slow_runs)
    timed = speed.timings.get(BUILD_IN_PROCESS)
    return _pair_result(
        spec,
        pair,
        deltas,
        _build(pair, pairdir / "fix.hpkg", status, slow_runs, timed),
        speed=speed,
        byte_compare=compared,
        masked_compare=masked,
        agreement=agree(masked, report) if report else None,
        hpkg_diff=report,
        hpkg_diff_error=report_error,
        touched=check_touched(spec, compared, masked, report) if spec.touched else None,
        memory=memory,
        memory_not_measured=memory_not_measured,
    )


def select_specs(specs: list[corpus.PairSpec], selectors: list[str]) -> list[corpus.PairSpec]:
    """Pairs whose role (or its plural) or name (case-insensitive prefix) matches a selector; default:
    all but the scale pair, which takes many minutes and gigabytes and is measured only when asked for."""
    if not selectors:
        return [s for s in specs if s.role != SCALE]
    wanted = [s.lower() for s in selectors]
    return [
        s for s in specs if any(w in (s.role, f"{s.role}s") or s.name.lower().startswith(w) for w in wanted)
    ]


def run_bench(
    specs: list[corpus.PairSpec],
    settings: Settings,
    pause: bool = False,
    load_cycles: int = 0,
    machine_wide: bool = False,
) -> BenchResult:
    """Run every selected pair, then (with `pause`) the pause-vs-restart section, (with `load_cycles`)
    the apply/revert load and (with `machine_wide`) `apply --all` beside the loops it replaces; of the
    "large" pairs only the first that can be fetched is kept."""
    status = engine.probe()
    results: list[PairResult] = []
    large_done = False
    large_errors: list[PairResult] = []
    for spec in specs:
        if spec.role == "large" and large_done:
            continue
        result = run_pair(spec, settings, status)
        if spec.role == "large":
            if result.error is not None:
                large_errors.append(result)
                continue
            large_done = True
        results.append(result)
    if not large_done:
        results.extend(large_errors)
    paused: tuple[PauseResult, ...] = ()
    if pause:
        from bench.pause import run_pause

        paused = run_pause(settings.workdir, settings.runs["pause"])
    loaded: tuple[LoadResult, ...] = ()
    if load_cycles:
        from bench.load import run_load

        loaded = run_load(settings.workdir, load_cycles)
    everywhere: tuple[MachineResult, ...] = ()
    if machine_wide:
        from bench.machine import run_machine

        everywhere = run_machine(settings.workdir, settings.runs["machine"])
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return BenchResult(date, machine_facts(), status, tuple(results), paused, loaded, everywhere)
