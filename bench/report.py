"""Render a bench run as plain-text tables for people and as one JSON document for pipelines."""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path

from bench.deltas import DeltaResult
from bench.load import LoadResult
from bench.pause import PauseResult, Summary
from bench.pause_curve import CurvePoint
from bench.run import (
    BUILD_CLI,
    BUILD_VS_DIFF,
    HPKG_CLI,
    HPKG_IN_PROCESS,
    OBJDUMP,
    BenchResult,
    PairResult,
)
from bench.stream import RETRY_SECONDS


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(result: BenchResult) -> str:
    """The whole run as JSON; name lists of the byte compare are kept to sizes, not names."""
    document = _jsonable(result)
    assert isinstance(document, dict)
    for pair in document["pairs"]:
        compared = pair.get("byte_compare")
        if compared:
            compared.pop("function_names", None)
            differing = compared.pop("differing_names", [])
            compared["differing_names_sample"] = differing[:20]
        masked = pair.get("masked_compare")
        if masked:
            masked["changed_names_sample"] = masked.pop("changed_names")[:40]
            masked.pop("common_names")
    return json.dumps(document, indent=2)


def _markdown_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A GitHub table, right-aligned where a column holds figures, to paste into the README."""

    def cell(value: str) -> str:
        return str(value).replace("|", "\\|").strip()

    def numeric(index: int) -> bool:
        return bool(rows) and all(re.fullmatch(r"[\d,.]+x?|-", row[index]) for row in rows)

    align = ["---:" if index and numeric(index) else "---" for index in range(len(header))]
    out = ["", " ".join(line.strip() for line in title.strip().splitlines()), ""]
    out += ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _table(title: str, header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """A titled table as aligned plain text, or as markdown; empty (no title either) without rows."""
    if not rows:
        return ""
    if markdown:
        return _markdown_table(title, header, rows)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def _na(reason: str | None) -> str:
    return f"n/a ({reason})" if reason else "n/a"


def _speed_row(pair: PairResult) -> list[str]:
    speed = pair.speed
    assert speed is not None
    cells = [pair.name, f"{pair.new_size:,}", f"{speed.timings[OBJDUMP].median:.3f}"]
    for name in (HPKG_IN_PROCESS, HPKG_CLI):
        if name in speed.timings:
            cells += [f"{speed.timings[name].median:.3f}", f"{speed.ratios[name]:.2f}x"]
        else:
            cells += [_na(speed.not_measured.get(name)), "-"]
    return [*cells, str(speed.runs)]


def _build_vs_diff_row(pair: PairResult) -> list[str]:
    speed = pair.speed
    assert speed is not None
    cells = [pair.name]
    for build, diff in BUILD_VS_DIFF.items():
        for name in (diff, build):
            timing = speed.timings.get(name)
            cells.append(_na(speed.not_measured.get(name)) if timing is None else f"{timing.median:.3f}")
        ratio = speed.build_ratios.get(build)
        cells.append("-" if ratio is None else f"{ratio:.2f}x")
    return [*cells, str(speed.runs)]


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f}"


def _memory_cells(pair: PairResult, name: str) -> list[str]:
    """Max RSS and tree peak of one command in MiB, each with its multiple of the larger input."""
    used = pair.memory.get(name)
    if used is None:
        return [_na(pair.memory_not_measured.get(name)), "-", "-", "-"]
    size = pair.input_size
    cells = [_mib(used.max_rss), f"{used.max_rss / size:.1f}x"]
    if used.tree_peak is None:
        return [*cells, "-", "-"]
    return [*cells, _mib(used.tree_peak), f"{used.tree_peak / size:.1f}x"]


def _memory_row(pair: PairResult) -> list[str]:
    cells = [pair.name, f"{pair.input_size:,}", *_memory_cells(pair, HPKG_CLI)]
    if pair.role != "scale":
        cells += _memory_cells(pair, BUILD_CLI)
    else:
        cells += ["not run on the scale pair", "-", "-", "-"]
    runs = {len(used.runs) for used in pair.memory.values()}
    return [*cells, ",".join(str(r) for r in sorted(runs)) or "-"]


def _changes_row(pair: PairResult) -> list[str]:
    compared = pair.byte_compare
    assert compared is not None
    common = compared.symbols_differ + compared.symbols_same
    by_symbol = f"{compared.symbols_differ}/{common} differ"
    by_symbol += f", +{compared.symbols_added} -{compared.symbols_removed}"
    by_fde = (
        _na(compared.fde_error)
        if compared.fde_error
        else f"{compared.fde_new_without_twin}/{compared.fde_new} without twin"
    )
    masked = pair.masked_compare
    assert masked is not None
    by_objdump = f"{masked.changed}/{masked.common} differ"
    report = pair.hpkg_diff
    hpkg = _na(pair.hpkg_diff_error)
    if report and pair.agreement:
        hpkg = f"{len(report.changed)} changed ({pair.agreement.hpkg_changed_named} named)"
        hpkg += f", +{len(report.added)} -{len(report.removed)}"
    touched = "-"
    if pair.touched:
        check = pair.touched
        touched = f"{len(check.named)}/{len(check.touched)} named, {len(check.code_changed)} code changed"
        if check.reported_by_hpkg is not None:
            assert check.missed_by_hpkg is not None
            found = len(check.code_changed) - len(check.missed_by_hpkg)
            touched += f"; hpkg: {found}/{len(check.code_changed)}, +{check.hpkg_others} others"
    return [pair.name, f"{by_symbol} ({compared.symbol_source})", by_fde, by_objdump, hpkg, touched]


def _reason_codes(reasons: tuple[str, ...]) -> str:
    """The reason codes of a refusal ("data-value-changed: variable ..." gives "data-value-changed"),
    with a note where the builder says debug symbols would have let it decide."""
    codes = dict.fromkeys(reason.split(":", 1)[0].strip() for reason in reasons)
    text = ", ".join(codes) or "no reason given"
    if any("without symbols" in reason or "--old-debug" in reason for reason in reasons):
        text += " (no debug symbols)"
    return text


def _build_size_cell(pair: PairResult) -> str:
    build = pair.hpkg_build
    if build is None:
        return _na(pair.hpkg_build_error)
    if build.outcome == "built":
        assert build.package_size is not None
        payload = f" (payload {build.compressed_payload:,})" if build.compressed_payload else ""
        return f"{build.package_size:,}{payload}"
    return f"{build.outcome}: {_reason_codes(build.reasons)}"


def _delta_size(delta: DeltaResult) -> str:
    if delta.size is None:
        return _na(delta.error)
    return f"{delta.size:,}" + ("" if delta.verified else " NOT REPRODUCED")


def _sizes_row(pair: PairResult) -> list[str]:
    cells = [pair.name, f"{pair.new_size:,}", _build_size_cell(pair)]
    cells += [_delta_size(d) for d in pair.deltas]
    bsdiff = next((d for d in pair.deltas if d.tool == "bsdiff" and d.size), None)
    build = pair.hpkg_build
    if bsdiff and build and build.package_size:
        assert bsdiff.size is not None
        cells.append(f"{build.package_size / bsdiff.size:.2f}")
    else:
        cells.append("-")
    return cells


def _times_row(pair: PairResult) -> list[str]:
    build = pair.hpkg_build
    if build is None:
        cli = _na(pair.hpkg_build_error)
    else:
        cli = f"{build.seconds:.3f}" + ("" if build.outcome == "built" else f" ({build.outcome})")
    in_process = "-" if pair.build_in_process is None else f"{pair.build_in_process.median:.3f}"
    cells = [pair.name, f"{pair.new_size:,}", in_process, cli]
    cells += [_na(d.error) if d.encode_seconds is None else f"{d.encode_seconds:.3f}" for d in pair.deltas]
    bsdiff = next((d.encode_seconds for d in pair.deltas if d.tool == "bsdiff" and d.encode_seconds), None)
    if bsdiff is None or pair.build_in_process is None:
        return [*cells, "-"]
    return [*cells, f"{pair.build_in_process.median / bsdiff:.1f}x"]


def _ms(summary: Summary | None) -> str:
    return "-" if summary is None else f"{summary.median:.2f} / {summary.maximum:.2f}"


def _counts(values: tuple[int, ...]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):g} / {max(values)} (total {sum(values)})"


def _counter_range(numbers: tuple[int, ...]) -> str:
    """The request numbers a restarted server's first answer carried: its counter began again."""
    if not numbers:
        return "-"
    low, high = min(numbers), max(numbers)
    return f"#{low}" if low == high else f"#{low}–#{high}"


def _over(pause: Summary | None, floor: Summary | None) -> str:
    """Median pause / median floor."""
    return f"{pause.median / floor.median:.2f}x" if pause and floor and floor.median > 0 else "-"


def _pause_row(result: PauseResult) -> list[str]:
    return [
        result.name,
        str(result.threads),
        str(result.rounds),
        _ms(result.floor_ms),
        _ms(result.apply_pause_ms),
        _over(result.apply_pause_ms, result.floor_ms),
        _ms(result.revert_pause_ms),
        _over(result.revert_pause_ms, result.floor_ms),
        _ms(result.apply_wall_ms),
        _ms(result.restart_ms),
        _counts(result.live_failed),
        _counts(result.restart_failed),
        str(result.live_wrong),
        f"{sum(result.counter_kept_live)}/{len(result.counter_kept_live)} rounds",
        _counter_range(result.counter_after_restart),
    ]


def _curve_row(p: CurvePoint) -> list[str]:
    per_thread = f"{p.floor_per_thread_us:.1f}" if p.floor_per_thread_us is not None else "-"
    attempts = f"{max(p.apply_attempts, default=0)} / {max(p.revert_attempts, default=0)}"
    refused = f" ({p.apply_refused} refused)" if p.apply_refused else ""
    return [str(p.threads), f"{p.period_ms} ms", f"{p.rounds}{refused}", _ms(p.floor_ms), per_thread,
            _ms(p.apply_pause_ms),
            _over(p.apply_pause_ms, p.floor_ms), _ms(p.revert_pause_ms), _over(p.revert_pause_ms, p.floor_ms),
            _ms(p.apply_stopped_ms), _ms(p.revert_stopped_ms), attempts]  # fmt: skip


def _curve_parts(result: BenchResult, markdown: bool) -> list[str]:
    """The pause curve over thread counts (busy_threads), and any count that could not be measured."""
    parts = []
    measured = [p for p in result.pause_curve if p.error is None]
    if measured:
        parts.append(
            _table(
                "\nPause curve (bench/programs/busy_threads.c: every thread calls the patched function each"
                " ms), ms (median / max);\nfloor = every thread stopped and resumed with no work, same"
                " process, interleaved; stopped = over every attempt",
                ["threads", "calls every", "rounds", "floor", "us/thread", "apply pause", "/floor",
                 "revert pause", "/floor", "apply stopped", "revert stopped", "max attempts"],
                [_curve_row(p) for p in measured],
                markdown=markdown,
            )
        )
    if any(p.apply_steps for p in measured):
        parts.append(_steps_table(measured, markdown))
    for point in result.pause_curve:
        if point.refusal:
            what = f"busy_threads ({point.threads} threads, every {point.period_ms} ms)"
            parts.append(f"\n{what}, first refusal:")
            parts += [f"  {line}" for line in point.refusal.splitlines()]
    for point in result.pause_curve:
        if point.error is not None:
            parts.append(f"\nbusy_threads ({point.threads} threads): pause not measured: {point.error}")
    return parts


def _steps_table(points: list[CurvePoint], markdown: bool) -> str:
    """Where the pause goes: each step of the window, median ms, for the floor, the apply and the revert."""
    names: list[str] = []
    for p in points:
        for steps in (p.floor_steps, p.apply_steps, p.revert_steps):
            names += [name for name, _ms in steps if name not in names]
    rows = []
    for p in points:
        for what, steps in (("floor", p.floor_steps), ("apply", p.apply_steps), ("revert", p.revert_steps)):
            by_name = dict(steps)
            cells = [f"{by_name[name]:.3f}" if name in by_name else "-" for name in names]
            rows.append([str(p.threads), what, *cells, f"{sum(by_name.values()):.3f}"])
    return _table(
        "\nWhere the pause goes (ms, median per step over the rounds; the window from the first interrupt"
        " to the last detach)",
        ["threads", "stop", *names, "sum"],
        rows,
        markdown=markdown,
    )


def _load_row(r: LoadResult) -> list[str]:
    counts = (r.threads, r.clients, r.cycles, r.failed_cycles, r.requests, r.failed_requests, r.wrong_answers,
              r.fixed_answers)  # fmt: skip
    return [r.name, *map(str, counts), _ms(r.apply_pause_ms), _ms(r.revert_pause_ms), f"{r.seconds:g}"]


def _load_parts(result: BenchResult, markdown: bool) -> list[str]:
    """The load table (apply/revert cycles under a request stream) and any failure kinds."""
    parts = []
    measured = [r for r in result.load if r.error is None]
    if measured:
        parts.append(
            _table(
                "\nLoad: live apply + revert cycles under a continuous request stream; wrong answers must"
                "\nbe 0; pauses in ms (median / max) of the cycles that worked",
                ["server", "threads", "clients", "cycles", "failed cycles", "requests", "failed requests",
                 "wrong answers", "answered by the fix", "apply pause", "revert pause", "seconds"],
                [_load_row(r) for r in measured],
                markdown=markdown,
            )
        )  # fmt: skip
    for loaded in result.load:
        if loaded.error is not None:
            parts.append(f"\n{loaded.name}: load not measured: {loaded.error}")
        for line, count in loaded.failures.items():
            parts.append(f"\n{loaded.name}: {count} failed cycle(s): {line}")
    return parts


def _seconds(summary: Summary | None) -> str:
    return f"{summary.median:.2f}" if summary is not None else "-"


def _machine_parts(result: BenchResult, markdown: bool) -> list[str]:
    """Machine-wide verbs: `apply --all` beside the loop of `apply --pid`, finding beside `verify --pid`."""
    parts = []
    for r in result.machine_wide:
        if r.error is not None or r.apply_all_s is None or r.apply_pid_loop_s is None:
            parts.append(f"\n{r.name}: machine-wide verbs not measured: {r.error}")
            continue
        all_s, loop = r.apply_all_s.median, r.apply_pid_loop_s.median
        one_job = r.apply_all_one_job_s.median if r.apply_all_one_job_s else 0.0
        rows = [
            [f"apply --all (--jobs {r.jobs})", _seconds(r.apply_all_s), "1.00x", _ms(r.pause_ms)],
            ["apply --all --jobs 1", _seconds(r.apply_all_one_job_s), f"{one_job / all_s:.2f}x",
             _ms(r.pause_one_job_ms)],
            [f"apply --pid, {r.processes} times", _seconds(r.apply_pid_loop_s), f"{loop / all_s:.2f}x", "-"],
        ]
        parts.append(
            _table(
                f"\nMachine-wide apply: {r.name} (8 workers each), wall seconds, median of {r.rounds}"
                " interleaved rounds;\nratio = time / apply --all; pause per process in ms (median / max)",
                ["command", "seconds", "ratio", "pause"], rows, markdown=markdown,
            )
        )  # fmt: skip
        verify = r.verify_loop_s or 0.0
        found = [
            [f"verify --pid over every pid ({r.machine_processes}), one round", f"{verify:.2f}", "1.00x"],
            ["scan_for_baselines, in-process", f"{r.scan_s.median:.4f}" if r.scan_s else "-",
             f"{r.scan_s.median / verify:.4f}x" if r.scan_s and verify else "-"],
            ["apply --all again (all already applied)", _seconds(r.reapply_all_s),
             f"{r.reapply_all_s.median / verify:.3f}x" if r.reapply_all_s and verify else "-"],
            ["status (every process)", _seconds(r.status_s),
             f"{r.status_s.median / verify:.3f}x" if r.status_s and verify else "-"],
        ]  # fmt: skip
        parts.append(
            _table(
                "\nFinding the affected processes: wall seconds; ratio = time / the verify --pid loop",
                ["how", "seconds", "ratio"], found, markdown=markdown,
            )
        )  # fmt: skip
    return parts


def to_table(result: BenchResult, markdown: bool = False) -> str:
    """Seven tables (speed, build vs diff, peak memory, changes, sizes, build times, pause vs restart),
    then notes and errors; as GitHub markdown tables with `markdown`."""
    ok = [p for p in result.pairs if p.error is None]
    compared = [p for p in ok if p.speed is not None]
    machine = result.machine
    parts = [f"hpkg bench, {result.date}, {machine['cpus']} CPUs ({machine['cpu']})"]
    parts.append(
        _table(
            "\nSpeed: wall seconds, median of interleaved runs; ratio = hpkg / objdump",
            ["pair", "new bytes", "objdump -d both", "in-process", "ratio", "CLI", "ratio", "runs"],
            [_speed_row(p) for p in compared],
            markdown=markdown,
        )
    )
    parts.append(
        _table(
            "\nBuild vs diff: wall seconds, medians of the same interleaved rounds as the speed table;"
            "\nratio = hpkg build / hpkg diff (in-process with in-process, CLI with CLI)",
            ["pair", "diff in-process", "build in-process", "ratio", "diff CLI", "build CLI", "ratio",
             "runs"],
            [_build_vs_diff_row(p) for p in compared if p.role != "scale"],
            markdown=markdown,
        )
    )
    parts.append(
        _table(
            "\nPeak memory, MiB, of the CLI in a fresh process (bench/memory.py); max RSS = the largest"
            "\nprocess, parent or forked child (getrusage RUSAGE_CHILDREN, as /usr/bin/time -v); tree = the"
            "\nsampled peak of the summed PSS of the process tree; x = multiple of the larger input file",
            ["pair", "input bytes", "diff max RSS", "x", "diff tree", "x", "build max RSS", "x", "build tree",
             "x", "runs"],
            [_memory_row(p) for p in ok if p.memory or p.memory_not_measured],
            markdown=markdown,
        )
    )
    parts.append(
        _table(
            "\nChanged functions: byte compare, objdump with addresses masked (named functions), hpkg diff;"
            "\ntouched = named functions the fix touched whose code changed, and how many hpkg reports",
            ["pair", "bytes by symbol", "bytes by FDE", "objdump masked", "hpkg diff", "touched functions"],
            [_changes_row(p) for p in compared if p.byte_compare is not None],
            markdown=markdown,
        )
    )
    with_deltas = [p for p in ok if p.deltas]
    delta_names = [d.tool for d in with_deltas[0].deltas] if with_deltas else []
    parts.append(
        _table(
            "\nPackage size vs deltas, bytes: .hpkg (unsigned; payload = compressed sections) beside"
            "\nbinary deltas, each applied back and compared with the fix; ratio = .hpkg / bsdiff",
            ["pair", "new bytes", "hpkg build", *delta_names, "ratio"],
            [_sizes_row(p) for p in with_deltas],
            markdown=markdown,
        )
    )
    parts.append(
        _table(
            "\nBuild time vs delta encode time, seconds: `hpkg build` in-process (build_package: diff,"
            "\nplan, verdict, encode) and through the CLI (a fresh interpreter: about 0.6 s of imports),"
            "\nbeside each delta encoder; medians of rounds; ratio = in-process build / bsdiff",
            ["pair", "new bytes", "build in-process", "hpkg build CLI", *delta_names, "ratio"],
            [_times_row(p) for p in with_deltas],
            markdown=markdown,
        )
    )
    if result.pause:
        measured = [r for r in result.pause if r.error is None]
        parts.append(
            _table(
                "\nPause vs restart, ms (median / max) under a continuous request stream;"
                "\nfailed = client requests that got no answer (median / max per round; clients retry after"
                f" {RETRY_SECONDS * 1000:g} ms); apply wall = apply_to_process call to return",
                ["server", "threads", "rounds", "floor", "apply pause", "/floor", "revert pause", "/floor",
                 "apply wall", "restart",
                 "failed: live", "failed: restart", "wrong answers", "count went on: live",
                 "first #N after restart"],
                [_pause_row(r) for r in measured],
                markdown=markdown,
            )
        )
        for paused in result.pause:
            if paused.error is not None:
                parts.append(f"\n{paused.name}: pause not measured: {paused.error}")
    parts.extend(_curve_parts(result, markdown))
    parts.extend(_load_parts(result, markdown))
    parts.extend(_machine_parts(result, markdown))
    for pair in result.pairs:
        if pair.touched and pair.touched.missed_by_hpkg:
            missed = ", ".join(pair.touched.missed_by_hpkg)
            parts.append(f"\n{pair.name}: touched, code changed, but not in hpkg's report: {missed}")
        if pair.touched and pair.touched.same_code_unreported:
            same = ", ".join(pair.touched.same_code_unreported)
            parts.append(f"\n{pair.name}: touched in source, same code (objdump), not reported: {same}")
    for pair in result.pairs:
        if pair.role == "scale" and pair.hpkg_diff is not None:
            report = pair.hpkg_diff
            counts = f"{len(report.changed)} changed, +{len(report.added)} -{len(report.removed)}"
            rest = f"{report.unchanged_count} unchanged, {report.data_changes} data changes"
            parts.append(f"\n{pair.name}: hpkg diff: {counts}, {rest}")
    for pair in result.pairs:
        if pair.agreement and (pair.agreement.only_hpkg or pair.agreement.only_objdump):
            only_hpkg, only_objdump = len(pair.agreement.only_hpkg), len(pair.agreement.only_objdump)
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(pair.agreement.only_hpkg_kinds.items()))
            parts.append(
                f"\n{pair.name}: named functions only hpkg reports: {only_hpkg} ({kinds}); "
                f"only the masked objdump compare: {only_objdump} (names in --json)"
            )
    for pair in result.pairs:
        if pair.hpkg_build and pair.hpkg_build.reasons:
            parts.append(f"\n{pair.name}: hpkg build {pair.hpkg_build.outcome}:")
            parts += [f"  - {reason}" for reason in pair.hpkg_build.reasons]
    for pair in result.pairs:
        if pair.error is not None:
            parts.append(f"\n{pair.name}: not measured: {pair.error}")
    return "\n".join(part for part in parts if part)
