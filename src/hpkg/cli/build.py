"""`hpkg build OLD NEW -o OUT.hpkg`: a hotpatch package from baseline OLD to fix NEW, or every reason not.

Exit codes: 0 built, 2 usage (also a reason --allow cannot override, or -o naming an input, a device or
a FIFO), 3 unreadable binary or key, 4 not hot-patchable (one line per reason on stderr), 5 nothing to
patch, 6 output not writable.
Overridable reasons (`--allow CODE`): listed, in user terms, by `hpkg build --help`; each overridable
refusal line ends with the `--allow CODE` that accepts it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

from hpkg.builder.verdict import OVERRIDABLE, REASON_CODES
from hpkg.cli.app import Application
from hpkg.cli.command import HpkgCommand, json_option
from hpkg.cli.debug_files import no_debuginfod_option
from hpkg.cli.diff import input_identity, load_pair
from hpkg.cli.paths import BINARY, KEY, OutputFile, refuse_output_onto_input

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# A package id is the hex of 16 bytes (hpkg.builder.build.package_id).
_PACKAGE_ID = re.compile(r"[0-9a-fA-F]{32}")

_ALLOW_HELP = (
    "Accept a refusal knowingly (repeatable; recorded in the package). CODE is one of: "
    + "; ".join(f"{code}: {REASON_CODES[code][1]}" for code in sorted(OVERRIDABLE))
    + ". A layout, TLS, size or unresolved-reference refusal can never be accepted."
)


def build_document(result, output: str, old_image, new_image) -> dict[str, Any]:
    """The `--json` document: inputs, verdict, output path, sizes and counts."""
    plan, package = result.plan, result.package
    return {
        "old": input_identity(old_image),
        "new": input_identity(new_image),
        "verdict": "patchable",
        "reasons": [r.line() for r in plan.verdict.reasons],
        "allowed_overrides": list(package.allowed_overrides),
        "output": output,
        "package_id": package.identity.package_id,
        "patch_level": package.identity.patch_level,
        "supersedes": package.identity.supersedes,
        "baseline_build_id": package.target.build_id.hex(),
        "mode": plan.mode,
        "signed": result.signed,
        "sizes": {
            "code": len(package.code),
            "rodata": len(package.rodata),
            "data": len(package.data),
            "bss": package.bss_size,
            "file": len(result.blob),
        },
        "counts": {
            "functions_replaced": len(package.functions),
            "functions_added": len(package.added_functions),
            "data_objects": len(package.data_objects),
            "imports": len(package.imports),
            "relocations": len(package.relocations),
            "relocations_by_kind": package.relocation_counts_by_kind(),
            "relocations_by_space": package.relocation_counts_by_space(),
            "jump_tables": plan.jump_tables,
            "rodata_references_to_baseline": plan.rodata_shared,
        },
        "functions": [
            {
                "name": f.name,
                "status": "replaced" if f.site else "added",
                "why": f.why,
                "code_size": f.code_size,
            }
            for f in plan.functions
        ],
        "left_out_line_number_only": list(plan.left_out),
        "warnings": list(plan.warnings),
    }


def _table(app: Application, result, output: str) -> None:
    plan, package = result.plan, result.package
    rows = [("function", "status", "why", "baseline", "size")]
    for f in plan.functions:
        where = f"{f.site.address:#x}" if f.site else "-"
        rows.append((f.name, "replaced" if f.site else "added", f.why, where, str(f.code_size)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        app.display("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for o in plan.objects:
        app.display(f"new {o.section.value:<6} {o.name} ({o.size} bytes)")
    kinds = ", ".join(f"{k} {n}" for k, n in package.relocation_counts_by_kind().items()) or "none"
    spaces = ", ".join(f"{k} {n}" for k, n in package.relocation_counts_by_space().items()) or "none"
    app.display(f"relocations {len(package.relocations)}: {kinds} (targets: {spaces})")
    app.display(
        f"sizes: code {len(package.code)}, rodata {len(package.rodata)}, data {len(package.data)},"
        f" bss {package.bss_size}; file {len(result.blob)} bytes"
    )
    signed = "signed" if result.signed else "unsigned"
    identity = package.identity
    app.display(f"wrote {output}: package {identity.package_id}, level {identity.patch_level}, {signed}")


def _write_package(path: str, blob: bytes, signing_key: Ed25519PrivateKey | None) -> None:
    """Write `blob` to `path` whole or not at all (hpkg.atomic_output), once the bytes read back from
    the new file read as a package again (and verify, when signed): a full disk or a bad write never
    replaces a previous good package. A symlink at `path` is refused, never followed."""
    from hpkg.atomic_output import write_output
    from hpkg.errors import HpkgError
    from hpkg.formats import read_package

    def check(written: bytes) -> None:
        try:
            read_package(written, signing_key.public_key() if signing_key else None)
        except HpkgError as exc:  # the bytes were just built and checked: a bug in hpkg (exit 1)
            raise RuntimeError(f"check after writing failed: {path} does not read back: {exc}") from None

    write_output(path, blob, check=check)


def build_loaded(app: Application, old_image, new_image, options, signing_key, show_progress: bool):
    """Plan, encode and sign the package from two loaded images (raises UnsupportedChange or NoChange)."""
    import time

    from hpkg.builder.build import build_images
    from hpkg.builder.functions import code_size, discover_functions
    from hpkg.cli.progress import progress_bar

    started = time.monotonic()
    # The same bar as `hpkg diff` (decoding is most of the time), on a terminal only, never in --json.
    functions = (discover_functions(old_image), discover_functions(new_image))
    total = code_size(old_image) + code_size(new_image)
    with progress_bar("building", total, show_progress) as progress:
        result = build_images(old_image, new_image, options, signing_key, progress, functions)
    app.detail(f"build: {sum(map(len, functions))} functions in {time.monotonic() - started:.2f} s")
    return result


def refusal_facts(exc: Exception) -> dict[str, Any]:
    """What a refused or empty build's document says beside its error: the verdict and lines left out."""
    from hpkg.errors import UnsupportedChange

    return {
        "verdict": "refused" if isinstance(exc, UnsupportedChange) else "no-change",
        "left_out_line_number_only": list(getattr(exc, "left_out", ())),
    }


def report_built(
    app: Application, result, output: str, signing_key: Ed25519PrivateKey | None, label: str = ""
) -> None:
    """Write the package, then the warnings and notes of a successful build (on stderr), each prefixed
    with `label` (the ELF's path in a .deb, so that a line names the file it is about)."""
    _write_package(output, result.blob, signing_key)
    for reason in result.plan.verdict.overridden:
        app.warning(f"{label}overridden: {reason.line()}")
    for warning in result.plan.warnings:
        app.warning(f"{label}{warning}")
    if result.plan.left_out:
        app.info(
            f"{label}left out {len(result.plan.left_out)} line-number-only change(s):"
            f" {', '.join(result.plan.left_out)}"
            " (--include-line-only puts them in)"
        )


def plan_options(
    allow: tuple[str, ...], level: int, supersedes: str | None, include_line_only: bool
):
    """PlanOptions from the command line, every option checked (a usage error names the option)."""
    from hpkg.builder.plan import PlanOptions
    from hpkg.builder.verdict import check_allowed

    try:
        allowed = check_allowed(allow)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow") from None
    if level == 1 and supersedes:
        raise click.BadParameter(
            "a level-1 package supersedes nothing; give --level 2 or higher", param_hint="--supersedes"
        )
    if supersedes is not None:
        if not _PACKAGE_ID.fullmatch(supersedes):
            raise click.BadParameter(
                f"{supersedes!r} is not a package id (32 hex digits, as hpkg inspect shows)",
                param_hint="--supersedes",
            )
        supersedes = supersedes.lower()
    return PlanOptions(level=level, supersedes=supersedes, allow=allowed, include_line_only=include_line_only)


@click.command("build", cls=HpkgCommand)
@click.argument("old", type=BINARY)
@click.argument("new", type=BINARY)
@click.option(
    "-o", "--output", required=True, type=click.Path(),
    help="The .hpkg to write; with .deb inputs, the directory the packages go to (created if missing).",
)
@click.option("--key", type=KEY, help="Ed25519 private key to sign with (keygen).")
@click.option("--level", type=click.IntRange(1, 2**32 - 1), default=1, show_default=True, help="Patch level.")
@click.option("--supersedes", metavar="ID", help="Package id of the lower level this one replaces.")
@click.option("--old-debug", "--old-dbgsym", "old_debug", type=BINARY,
              help="Separate debug file for OLD (symbols); with .deb inputs, OLD's -dbgsym .deb.")
@click.option("--new-debug", "--new-dbgsym", "new_debug", type=BINARY,
              help="Separate debug file for NEW (symbols); with .deb inputs, NEW's -dbgsym .deb.")
@no_debuginfod_option
@click.option("--allow", "allow", multiple=True, metavar="CODE", help=_ALLOW_HELP)
@click.option("--include-line-only", is_flag=True, help="Also patch functions changed in line numbers only.")
@json_option
@click.pass_context
def command(
    ctx: click.Context,
    old: str,
    new: str,
    output: str,
    key: str | None,
    level: int,
    supersedes: str | None,
    old_debug: str | None,
    new_debug: str | None,
    no_debuginfod: bool,
    allow: tuple[str, ...],
    include_line_only: bool,
    as_json: bool,
) -> None:
    """Build a hotpatch package that turns baseline OLD into fix NEW in running processes.

    OLD and NEW may also be two versions of a Debian package (.deb, with --old-dbgsym/--new-dbgsym for
    their -dbgsym packages): -o then names a directory, and every ELF file that changed between them
    gets its own package there, or its refusal ("needs a restart"); a summary lists every ELF file.
    """
    from hpkg.cli.debian import is_deb
    from hpkg.errors import NoChange, UnsupportedChange
    from hpkg.formats import load_private_key

    app: Application = ctx.obj
    options = plan_options(allow, level, supersedes, include_line_only)
    if is_deb(old) or is_deb(new):
        from hpkg.cli.deb_pairs import build_debs

        if supersedes is not None:
            raise click.UsageError("--supersedes names one package; not with .deb inputs (give --level only)")
        signing_key = load_private_key(key) if key else None
        build_debs(app, old, new, output, old_debug, new_debug, no_debuginfod, options, signing_key, as_json)
        return
    output_param = next(p for p in ctx.command.params if p.name == "output")
    output = OutputFile().convert(output, output_param, ctx)
    refuse_output_onto_input(
        output,
        {"the baseline OLD": old, "the fix NEW": new, "--old-debug": old_debug, "--new-debug": new_debug,
         "the signing key": key},
    )
    signing_key = load_private_key(key) if key else None
    old_image, new_image = load_pair(app, old, new, old_debug, new_debug, no_debuginfod)
    try:
        result = build_loaded(app, old_image, new_image, options, signing_key, not (app.quiet or as_json))
    except (UnsupportedChange, NoChange) as exc:
        facts = {"old": input_identity(old_image), "new": input_identity(new_image), **refusal_facts(exc)}
        app.abort_with(exc, facts)
    report_built(app, result, output, signing_key)
    if as_json:
        app.display_json(build_document(result, output, old_image, new_image))
        return
    _table(app, result, output)
