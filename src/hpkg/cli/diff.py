"""`hpkg diff OLD NEW`: which functions and data objects differ between a baseline and a fix."""

from __future__ import annotations

import difflib
from typing import Any

import click

from hpkg.cli.app import Application
from hpkg.cli.command import HpkgCommand, json_option
from hpkg.cli.debug_files import debuginfod_fetch, no_debuginfod_option
from hpkg.cli.paths import BINARY


def _hex(value: int | None) -> str:
    return f"{value:#x}" if value is not None else "-"


def input_identity(image) -> dict[str, Any]:
    """Which file a document speaks of: its path, GNU build-id, SHA-256 and the debug file used."""
    return {
        "path": image.path,
        "build_id": image.build_id,
        "sha256": image.file_sha256.hex() or None,
        "debug_file": image.debug_path,
        "stripped": image.stripped,
    }


def _entry(pair) -> dict[str, Any]:
    """A function of the diff; addresses are integers (link addresses), as in every hpkg document."""
    entry: dict[str, Any] = {"name": pair.name}
    if pair.old is not None:
        entry["old_address"] = pair.old.function.address
        entry["old_size"] = pair.old.function.size
    if pair.new is not None:
        entry["new_address"] = pair.new.function.address
        entry["new_size"] = pair.new.function.size
    if pair.change_kind is not None:
        entry["change"] = pair.change_kind.value
    return entry


def diff_document(result, old_image, new_image, stream: bool = False) -> dict[str, Any]:
    """The `--json` document of one pair of binaries (also an entry of a .deb diff). With `stream`, the
    function lists are iterators that `display_json` writes an entry at a time (top level only)."""

    def entries(pairs) -> Any:
        return (_entry(p) for p in pairs) if stream else [_entry(p) for p in pairs]

    return {
        "old": input_identity(old_image),
        "new": input_identity(new_image),
        "mode": result.mode,
        "changed": entries(result.changed),
        "added": entries(result.added),
        "removed": entries(result.removed),
        "data": [{"name": d.name, "change": d.change.value} for d in result.data_changes],
        "unchanged_count": len(result.unchanged),
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
                    _hex(e.get("old_address")),
                    str(e.get("old_size", "-")),
                    _hex(e.get("new_address")),
                    str(e.get("new_size", "-")),
                    e.get("change", ""),
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


def _function_diff(result, name: str) -> dict[str, Any]:
    """One function's disassembly diff (`--function NAME`); an unknown name is a usage error."""
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
    return {
        **_entry(pair),
        "status": pair.status.value,
        "unified_diff": list(difflib.unified_diff(old_lines, new_lines, "old", "new", lineterm="", n=3)),
    }


def load_pair(app: Application, old: str, new: str, old_debug: str | None, new_debug: str | None,
              no_debuginfod: bool):
    """Both images, their debug files found as `build` finds them: given, installed by build-id, then from
    debuginfod; a warning when only one side has symbols."""
    from hpkg.builder.image import DEBUG_ROOTS, load_image

    fetch_debug = debuginfod_fetch(no_debuginfod)
    old_image = load_image(old, old_debug, DEBUG_ROOTS, fetch_debug)
    new_image = load_image(new, new_debug, DEBUG_ROOTS, fetch_debug)
    for side, image in (("old", old_image), ("new", new_image)):
        debug = f", symbols from {image.debug_path}" if image.debug_path else ""
        app.detail(f"{side}: {image.path} (build-id {image.build_id or 'none'}{debug})")
    return old_image, new_image


def diff_loaded(app: Application, old_image, new_image, show_progress: bool):
    """The diff of two loaded images (functions decoded under a progress bar on a terminal)."""
    import time

    from hpkg.builder.diff import diff_images
    from hpkg.builder.functions import code_size
    from hpkg.cli.progress import progress_bar

    if old_image.stripped != new_image.stripped:
        side = "OLD" if old_image.stripped else "NEW"
        app.warning(
            f"{side} has no symbol table but the other build has one: give {side} its debug file"
            f" (--{side.lower()}-debug), or references to named data will compare unequal"
        )
    started = time.monotonic()
    # The bar counts bytes of code, known before any function is found: functions are found where they
    # are canonicalized (for a large pair, in the forked children: see canon.canonicalize_images).
    total = code_size(old_image) + code_size(new_image)
    with progress_bar("diffing", total, show_progress) as progress:
        result = diff_images(old_image, new_image, progress=progress)
    counted = sum((p.old is not None) + (p.new is not None) for p in result.pairs)
    app.detail(f"diff: {counted} functions in {time.monotonic() - started:.2f} s")
    return result


@click.command("diff", cls=HpkgCommand)
@click.argument("old", type=BINARY)
@click.argument("new", type=BINARY)
@json_option
@click.option("--function", "function_name", metavar="NAME", help="Show this function's disassembly diff.")
@click.option("--old-debug", "--old-dbgsym", "old_debug", type=BINARY,
              help="Separate debug file for OLD (symbols); with .deb inputs, OLD's -dbgsym .deb.")
@click.option("--new-debug", "--new-dbgsym", "new_debug", type=BINARY,
              help="Separate debug file for NEW (symbols); with .deb inputs, NEW's -dbgsym .deb.")
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
    """Report the functions and data objects that differ between baseline OLD and fix NEW.

    OLD and NEW may also be two versions of a Debian package (.deb): both are unpacked into a private
    temporary directory and every ELF file is diffed with its namesake (one entry per path).
    """
    from hpkg.cli.debian import is_deb

    if is_deb(old) or is_deb(new):
        from hpkg.cli.deb_pairs import diff_debs

        if function_name:
            raise click.UsageError("--function names one function of one binary; not with .deb inputs")
        diff_debs(app, old, new, old_debug, new_debug, no_debuginfod, as_json)
        return
    old_image, new_image = load_pair(app, old, new, old_debug, new_debug, no_debuginfod)
    result = diff_loaded(app, old_image, new_image, not (app.quiet or as_json))
    if function_name:
        function = _function_diff(result, function_name)
        if as_json:
            app.display_json({"old": input_identity(old_image), "new": input_identity(new_image),
                              "mode": result.mode, "function": function})
            return
        app.display(f"{function['name']}: {function['status']} {function.get('change', '')}".rstrip())
        for line in function["unified_diff"]:
            app.display(line)
        return
    if as_json:
        app.display_json(diff_document(result, old_image, new_image, stream=True))
        return
    _table(app, result)
