"""Render a bench run as plain-text tables for people and as one JSON document for pipelines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.run import HPKG_CLI, HPKG_IN_PROCESS, OBJDUMP, BenchResult, PairResult


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


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
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


def _delta_cell(size: int | None, seconds: float | None, verified: bool, error: str | None) -> str:
    if size is None or seconds is None:
        return _na(error)
    return f"{size:,} B {seconds:.2f}s" + ("" if verified else " NOT REPRODUCED")


def _deltas_row(pair: PairResult) -> list[str]:
    cells = [pair.name, f"{pair.new_size:,}"]
    cells += [_delta_cell(d.size, d.encode_seconds, d.verified, d.error) for d in pair.deltas]
    build = pair.hpkg_build
    if build is None:
        cells.append(_na(pair.hpkg_build_error))
    elif build.outcome == "built":
        payload = f" (payload {build.compressed_payload:,} B)" if build.compressed_payload else ""
        cells.append(f"{build.package_size:,} B{payload} {build.seconds:.2f}s")
    else:
        cells.append(f"{build.outcome}: {len(build.reasons)} reasons, {build.seconds:.2f}s")
    return cells


def to_table(result: BenchResult) -> str:
    """Three tables (speed, changes, deltas) plus a line per pair that could not run."""
    ok = [p for p in result.pairs if p.error is None]
    machine = result.machine
    parts = [f"hpkg bench, {result.date}, {machine['cpus']} CPUs ({machine['cpu']})"]
    parts.append(
        _table(
            "\nSpeed: wall seconds, median of interleaved runs; ratio = hpkg / objdump",
            ["pair", "new bytes", "objdump -d both", "in-process", "ratio", "CLI", "ratio", "runs"],
            [_speed_row(p) for p in ok],
        )
    )
    parts.append(
        _table(
            "\nChanged functions: byte compare, objdump with addresses masked (named functions), hpkg diff;"
            "\ntouched = named functions the fix touched whose code changed, and how many hpkg reports",
            ["pair", "bytes by symbol", "bytes by FDE", "objdump masked", "hpkg diff", "touched functions"],
            [_changes_row(p) for p in ok],
        )
    )
    delta_names = [d.tool for d in ok[0].deltas] if ok else []
    parts.append(
        _table(
            "\nDeltas: size and encode time; every delta was applied back and compared with the fix",
            ["pair", "new bytes", *delta_names, "hpkg build"],
            [_deltas_row(p) for p in ok],
        )
    )
    for pair in result.pairs:
        if pair.touched and pair.touched.missed_by_hpkg:
            missed = ", ".join(pair.touched.missed_by_hpkg)
            parts.append(f"\n{pair.name}: touched, code changed, but not in hpkg's report: {missed}")
        if pair.touched and pair.touched.same_code_unreported:
            same = ", ".join(pair.touched.same_code_unreported)
            parts.append(f"\n{pair.name}: touched in source, same code (objdump), not reported: {same}")
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
    return "\n".join(parts)
