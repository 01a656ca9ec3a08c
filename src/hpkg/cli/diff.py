"""`hpkg diff OLD NEW`: which functions and data objects differ between a baseline and a fix."""

from __future__ import annotations

import difflib
from typing import Any

import click

from hpkg.cli.app import Application
from hpkg.cli.debug_files import debuginfod_fetch, no_debuginfod_option
from hpkg.cli.paths import BINARY


def _hex(value: int | None) -> str | None:
    return f"{value:#x}" if value is not None else None


def _entry(pair) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": pair.name}
    if pair.old is not None:
        entry["old_address"] = _hex(pair.old.function.address)
        entry["old_size"] = pair.old.function.size
    if pair.new is not None:
        entry["new_address"] = _hex(pair.new.function.address)
        entry["new_size"] = pair.new.function.size
    if pair.change_kind is not None:
        entry["change_kind"] = pair.change_kind.value
    return entry


def _document(result) -> dict[str, Any]:
    """The `--json` document; its function lists are iterators, written an entry at a time."""
    return {
        "changed": (_entry(p) for p in result.changed),
        "added": (_entry(p) for p in result.added),
        "removed": (_entry(p) for p in result.removed),
        "data": [{"name": d.name, "change": d.change.value} for d in result.data_changes],
        "unchanged_count": len(result.unchanged),
        "mode": result.mode,
    }


def _table(app: Application, result) -> None:
    rows = [("status", "function", "old address", "old size", "new address", "new size", "change")]
    for label, pairs in (("changed", result.changed), ("added", result.added), ("removed", result.removed)):
        for p in pairs:
            e = _entry(p)
            rows.append(
                (
                    label,
                    p.name,
                    e.get("old_address") or "-",
                    str(e.get("old_size", "-")),
                    e.get("new_address") or "-",
                    str(e.get("new_size", "-")),
                    e.get("change_kind", ""),
                )
            )
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            app.display("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        app.display()
    if result.data_changes:
        app.display("data objects:")
        for d in result.data_changes:
            app.display(f"  {d.change.value:<14} {d.name}")
        app.display()
    app.display(
        f"{len(result.changed)} changed, {len(result.added)} added, {len(result.removed)} removed, "
        f"{len(result.data_changes)} data changes, {len(result.unchanged)} unchanged ({result.mode} mode)"
    )


def _function_diff(app: Application, result, name: str) -> None:
    from hpkg.builder.canon import render_function

    pair = result.pair(name)
    if pair is None:
        raise click.BadParameter(f"no function named {name} in either build", param_hint="--function")
    old_lines = render_function(pair.old) if pair.old is not None else []
    baseline_names = {
        p.new.function.address: p.old.function.name
        for p in result.pairs
        if p.old is not None and p.new is not None
    }
    new_lines = render_function(pair.new, baseline_names) if pair.new is not None else []
    kind = pair.change_kind.value if pair.change_kind else ""
    app.display(f"{pair.name}: {pair.status.value} {kind}".rstrip())
    for line in difflib.unified_diff(old_lines, new_lines, "old", "new", lineterm="", n=3):
        app.display(line)


@click.command("diff")
@click.argument("old", type=BINARY)
@click.argument("new", type=BINARY)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--function", "function_name", metavar="NAME", help="Show this function's disassembly diff.")
@click.option("--old-debug", type=BINARY, help="Separate debug file for OLD (symbols).")
@click.option("--new-debug", type=BINARY, help="Separate debug file for NEW (symbols).")
@no_debuginfod_option
@click.pass_obj
def command(
    app: Application,
    old: str,
    new: str,
    as_json: bool,
    function_name: str | None,
    old_debug: str | None,
    new_debug: str | None,
    no_debuginfod: bool,
) -> None:
    """Report the functions and data objects that differ between baseline OLD and fix NEW."""
    from hpkg.builder.diff import diff_images
    from hpkg.builder.functions import discover_functions
    from hpkg.builder.image import DEBUG_ROOTS, load_image
    from hpkg.cli.progress import progress_bar

    # Debug files as `build` finds them: given, installed by build-id, then from debuginfod.
    fetch_debug = debuginfod_fetch(no_debuginfod)
    old_image = load_image(old, old_debug, DEBUG_ROOTS, fetch_debug)
    new_image = load_image(new, new_debug, DEBUG_ROOTS, fetch_debug)
    if old_image.stripped != new_image.stripped:
        side = "OLD" if old_image.stripped else "NEW"
        app.warning(
            f"{side} has no symbol table but the other build has one: give {side} its debug file"
            f" (--{side.lower()}-debug), or references to named data will compare unequal"
        )
    functions = (discover_functions(old_image), discover_functions(new_image))
    with progress_bar("diffing", sum(map(len, functions)), not app.quiet) as progress:
        result = diff_images(old_image, new_image, progress=progress, functions=functions)
    if as_json:
        app.display_json(_document(result))
        return
    if function_name:
        _function_diff(app, result, function_name)
        return
    _table(app, result)
