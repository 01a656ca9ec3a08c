"""`hpkg inspect PKG`: what a package holds, for people (default) or pipelines (`--json`).

Given an ELF file instead (a copy `hpkg apply --file` wrote), it lists the packages the file carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from hpkg.cli.app import Application
from hpkg.cli.command import HpkgCommand, json_option
from hpkg.cli.paths import PACKAGE

if TYPE_CHECKING:  # the formats package pulls in zstandard and cryptography: only load it when run
    from hpkg.formats.model import LoadedPackage, TargetRecord


def inspect_document(loaded: LoadedPackage) -> dict[str, Any]:
    """The `--json` document: every manifest record plus the container facts."""
    from hpkg.formats.manifest import package_document

    pkg = loaded.package
    records = package_document(pkg)
    identity = records.pop("identity")
    return {
        "kind": "package",
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
    if t.image_base is not None:
        # A PE32+ baseline: the identity is CodeView's (or the fallback rule's), addresses are RVAs.
        baseline = (
            f"baseline   {t.machine} {t.file_format}, identity {t.build_id.hex()}, image base"
            f" {t.image_base:#x}, SizeOfImage {t.image_size} bytes{hint}"
        )
    else:
        baseline = (
            f"baseline   {t.machine} {t.file_format}, build-id {t.build_id.hex()},"
            f" image {t.image_size} bytes{hint}"
        )
    lines = [
        f"package    {i.package_id} (patch level {i.patch_level}{supersedes})",
        baseline,
        f"format     .hpkg {major}.{minor}, {loaded.file_size} bytes: payload {loaded.payload_size} bytes,"
        f" {loaded.compressed_size} compressed",
        f"sections   code {len(pkg.code)}, rodata {len(pkg.rodata)}, data {len(pkg.data)},"
        f" bss {pkg.bss_size}",
        f"signature  {signature}",
        f"builder    {i.builder_version or 'unknown'}",
        f"functions  {len(pkg.functions)} replaced",
    ]
    lines += [
        f"  {_baseline_address(t, f.baseline_address)}  {f.name}  {f.baseline_size} -> {f.code_size} bytes"
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


def _baseline_address(target: TargetRecord, address: int) -> str:
    """A baseline address as a person compares it with objdump: a PE32+ RVA with its ImageBase-based VA."""
    if target.image_base is None:
        return f"{address:#014x}"
    return f"rva {address:#x} ({target.image_base + address:#x})"


_ELF_MAGIC = b"\x7fELF"


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(_ELF_MAGIC)) == _ELF_MAGIC
    except OSError:
        return False  # the package reader says why, in one line


def _is_pe(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"MZ"
    except OSError:
        return False


def patched_file_document(path: str) -> dict[str, Any]:
    """The packages an ELF or PE file carries (recorded by `apply --file`, oldest first); a file that
    carries none is no input for inspect (PackageError, exit 3), as any other file that is not a package."""
    from hpkg.errors import PackageError
    from hpkg.loader.pe_file import PeFile, is_pe_path

    if is_pe_path(path):
        pe = PeFile.open(path)
        entries, build_id, what = pe.applied_packages(), pe.build_id.hex(), "a PE file"
    else:
        from hpkg.elf.file import ElfFile
        from hpkg.loader.file_apply import applied_packages

        elf = ElfFile(path)
        entries, build_id, what = applied_packages(elf), elf.build_id.hex() or None, "an ELF file"
    packages = [
        {
            "package_id": e["package_id"],
            "patch_level": e["patch_level"],
            "supersedes": e.get("supersedes"),
            "code": {"start": e["code"][0], "end": e["code"][1]},
            "functions": list(e.get("functions", [])),
        }
        for e in entries
    ]
    if not packages:
        raise PackageError(f"{path}: not an .hpkg package, and {what} that carries none"
                           " (hpkg apply --file writes files that do)")
    return {"kind": "patched-file", "path": path, "build_id": build_id, "packages": packages}


def patched_file_lines(document: dict[str, Any]) -> list[str]:
    """The human summary of a patched file: one line per package it carries."""
    path, packages = document["path"], document["packages"]
    kind = "PE" if _is_pe(path) else "ELF"
    lines = [f"{path}: {kind} file patched by hpkg apply --file (build-id {document['build_id']}),"
             f" {len(packages)} package{'s' * (len(packages) != 1)}"]
    for p in packages:
        supersedes = f", supersedes {p['supersedes']}" if p["supersedes"] else ""
        lines.append(f"  package {p['package_id']} (patch level {p['patch_level']}{supersedes})"
                     f" code {p['code']['start']:#x}-{p['code']['end']:#x}")
        lines += [f"    {name}" for name in p["functions"]]
    return lines


@click.command("inspect", cls=HpkgCommand)
@click.argument("package", type=PACKAGE)
@json_option
@click.pass_obj
def command(app: Application, package: str, as_json: bool) -> None:
    """Show what a .hpkg package holds: baseline, patch level, functions, relocations, signature.

    Given an ELF or PE file patched with `hpkg apply --file`, show the packages it carries.
    """
    from hpkg.formats.package import read_package, read_package_file

    if _is_elf(package) or _is_pe(package):
        document = patched_file_document(package)
        if as_json:
            app.display_json(document)
            return
        for line in patched_file_lines(document):
            app.display(line)
        return
    loaded = read_package(read_package_file(package))
    if as_json:
        app.display_json(inspect_document(loaded))
        return
    for line in inspect_lines(loaded):
        app.display(line)
