"""`hpkg inspect PKG`: what a package holds, for people (default) or pipelines (`--json`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import PACKAGE

if TYPE_CHECKING:  # the formats package pulls in zstandard and cryptography: only load it when run
    from hpkg.formats.model import LoadedPackage


def inspect_document(loaded: LoadedPackage) -> dict[str, Any]:
    """The `--json` document: every manifest record plus the container facts."""
    from hpkg.formats.manifest import package_document

    pkg = loaded.package
    records = package_document(pkg)
    identity = records.pop("identity")
    return {
        "format_version": "{}.{}".format(*loaded.format_version),
        **identity,
        **records,
        "sections": {
            "code": len(pkg.code),
            "rodata": len(pkg.rodata),
            "data": len(pkg.data),
            "bss": pkg.bss_size,
            "relocation_count": len(pkg.relocations),
        },
        "relocations": pkg.relocation_counts_by_kind(),
        "relocations_by_space": pkg.relocation_counts_by_space(),
        "file_size": loaded.file_size,
        "compressed_size": loaded.compressed_size,
        "uncompressed_size": loaded.payload_size,
        "signed": loaded.signed,
        "key_id": loaded.key_id.hex() if loaded.key_id else None,
        "signature_checked": False,
        "ignored_fields": list(loaded.ignored_fields),
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"


def inspect_lines(loaded: LoadedPackage) -> list[str]:
    """The human summary, one fact per line, addresses in hex."""
    pkg, t, i = loaded.package, loaded.package.target, loaded.package.identity
    supersedes = f", supersedes {i.supersedes}" if i.supersedes else ""
    signature = (
        f"signed, key id {loaded.key_id.hex()} (not checked here: use hpkg verify --key)"
        if loaded.signed and loaded.key_id
        else "unsigned"
    )
    hint = f", {t.soname_hint!r}" if t.soname_hint else ""
    major, minor = loaded.format_version
    lines = [
        f"package    {i.package_id} (patch level {i.patch_level}{supersedes})",
        f"baseline   {t.machine} {t.file_format}, build-id {t.build_id.hex()},"
        f" image {t.image_size} bytes{hint}",
        f"format     .hpkg {major}.{minor}, {loaded.file_size} bytes: payload {loaded.payload_size} bytes,"
        f" {loaded.compressed_size} compressed",
        f"sections   code {len(pkg.code)}, rodata {len(pkg.rodata)}, data {len(pkg.data)},"
        f" bss {pkg.bss_size}",
        f"signature  {signature}",
        f"builder    {i.builder_version or 'unknown'}",
        f"functions  {len(pkg.functions)} replaced",
    ]
    lines += [
        f"  {f.baseline_address:#014x}  {f.name}  {f.baseline_size} -> {f.code_size} bytes"
        f" (pre-image {f.pre_image.hex()})"
        for f in pkg.functions
    ]
    lines.append(f"added      {len(pkg.added_functions)} functions")
    lines += [f"  code+{f.code_offset:#x}  {f.name}  {f.code_size} bytes" for f in pkg.added_functions]
    lines.append(f"data       {len(pkg.data_objects)} objects")
    lines += [f"  {d.section.value}+{d.offset:#x}  {d.name}  {d.size} bytes" for d in pkg.data_objects]
    lines.append(f"imports    {len(pkg.imports)}")
    lines += [f"  {m.name}" + (f"@{m.version}" if m.version else "") for m in pkg.imports]
    lines.append(f"relocations {len(pkg.relocations)}: {_counts(pkg.relocation_counts_by_kind())}")
    lines.append(f"  by target: {_counts(pkg.relocation_counts_by_space())}")
    lines.append(f"overrides  {', '.join(pkg.allowed_overrides) or 'none'}")
    if loaded.ignored_fields:
        lines.append(f"ignored    fields from a newer format minor: {', '.join(loaded.ignored_fields)}")
    return lines


@click.command("inspect")
@click.argument("package", type=PACKAGE)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a summary.")
@click.pass_obj
def command(app: Application, package: str, as_json: bool) -> None:
    """Show what a .hpkg package holds: baseline, patch level, functions, relocations, signature."""
    from hpkg.formats.package import read_package, read_package_file

    loaded = read_package(read_package_file(package))
    if as_json:
        app.display_json(inspect_document(loaded))
        return
    for line in inspect_lines(loaded):
        app.display(line)
