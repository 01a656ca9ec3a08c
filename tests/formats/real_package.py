"""A package whose content comes from real gcc output, for the .hpkg container tests.

The baseline and fix programs in data/ are compiled once per session with `-Wl,--emit-relocs`;
the package's code is the fix's function bytes as linked, its relocations are the fix's own static
relocations re-expressed in package terms, and its baseline records come from the baseline binary.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import lief

from hpkg.formats import (
    AddedFunction,
    DataObject,
    DataSection,
    ImportRecord,
    Package,
    PackageSection,
    PatchIdentity,
    Relocation,
    RelocationKind,
    ReplacedFunction,
    TargetRecord,
    TargetSpace,
)

DATA = Path(__file__).parent / "data"
CHANGED = ("checksum", "greet", "classify")
ADDED = ("clamp",)
NEW_DATA = {"greet_limit": DataSection.DATA, "farewell": DataSection.RODATA}
JUMP_SIZE = 5  # jmp rel32, the bytes the loader overwrites at each patch site


def compile_program(source: Path, out: Path, defines: tuple[str, ...] = ()) -> Path:
    """Compile one C file with the hotpatch-ready relocation flag; fail the session if gcc fails."""
    flags = [f"-D{name}" for name in defines]
    command = ["gcc", "-O2", *flags, "-Wl,--emit-relocs", "-Wl,--build-id", "-o", str(out), str(source)]
    subprocess.run(command, check=True)
    return out


def _function_bytes(binary: lief.ELF.Binary, name: str) -> tuple[int, bytes]:
    symbol = binary.get_symbol(name)
    return symbol.value, bytes(binary.get_content_from_virtual_address(symbol.value, symbol.size))


def _build_id(binary: lief.ELF.Binary) -> bytes:
    (note,) = [n for n in binary.notes if n.type == lief.ELF.Note.TYPE.GNU_BUILD_ID]
    return bytes(note.description)


def _image_size(binary: lief.ELF.Binary) -> int:
    loads = [s for s in binary.segments if s.type == lief.ELF.Segment.TYPE.LOAD]
    return max(s.virtual_address + s.virtual_size for s in loads) - min(s.virtual_address for s in loads)


def _section_bytes(binary: lief.ELF.Binary, section: lief.ELF.Section) -> bytes:
    return bytes(binary.get_content_from_virtual_address(section.virtual_address, section.size))


def _r_type(relocation: lief.ELF.Relocation) -> int:
    return relocation.r_info(lief.ELF.Header.CLASS.ELF64) & 0xFFFFFFFF


def build_real_package(
    baseline_path: Path,
    fix_path: Path,
    changed: tuple[str, ...] = CHANGED,
    added: tuple[str, ...] = ADDED,
    new_data: dict[str, DataSection] | None = None,
    identity: PatchIdentity | None = None,
) -> Package:
    """A package replacing `changed` and adding `added`, from the two compiled programs.

    With `new_data` (default NEW_DATA) the fix's .rodata and .data travel in the package; with an empty
    mapping they do not, and the replaced code may then refer to nothing but functions and imports.
    """
    new_data = NEW_DATA if new_data is None else new_data
    base, fix = lief.parse(str(baseline_path)), lief.parse(str(fix_path))
    rodata, data = fix.get_section(".rodata"), fix.get_section(".data")

    code = bytearray()
    placed: dict[str, tuple[int, int, bytes]] = {}  # name -> (code offset, fix address, bytes)
    for name in changed + added:
        code += b"\xcc" * (-len(code) % 16)  # int3 padding between functions, 16-byte aligned
        address, body = _function_bytes(fix, name)
        placed[name] = (len(code), address, body)
        code += body

    imports: list[ImportRecord] = []
    relocations = []
    for r in fix.relocations:
        owner = next((n for n, (_, a, b) in placed.items() if a <= r.address < a + len(b)), None)
        if owner is None or not r.has_symbol:
            continue
        offset, address, _ = placed[owner]
        sym = r.symbol
        if sym.name in placed:
            space, target = TargetSpace.CODE, placed[sym.name][0]
        elif sym.shndx == 0:
            name, _, version = sym.name.partition("@")
            record = ImportRecord(name, version.lstrip("@") or None)
            if record not in imports:
                imports.append(record)
            space, target = TargetSpace.IMPORT, imports.index(record)
        elif sym.type != lief.ELF.Symbol.TYPE.SECTION and sym.name and base.has_symbol(sym.name):
            space, target = TargetSpace.BASELINE, base.get_symbol(sym.name).value
        elif rodata.virtual_address <= sym.value < rodata.virtual_address + rodata.size:
            space, target = TargetSpace.RODATA, sym.value - rodata.virtual_address
        elif data.virtual_address <= sym.value < data.virtual_address + data.size:
            space, target = TargetSpace.DATA, sym.value - data.virtual_address
        else:  # a section symbol of a section the baseline has too (.bss: the baseline's live state)
            section = fix.sections[sym.shndx]
            space, target = TargetSpace.BASELINE, base.get_section(section.name).virtual_address
        if space in (TargetSpace.RODATA, TargetSpace.DATA) and not new_data:
            raise AssertionError(f"{owner} refers to the fix's {space.name.lower()}, left out of the package")
        relocations.append(
            Relocation(PackageSection.CODE, offset + r.address - address, RelocationKind(_r_type(r)), space,
                       target, r.addend)
        )

    functions = []
    for name in changed:
        address, body = _function_bytes(base, name)
        functions.append(
            ReplacedFunction(name, address, len(body), hashlib.sha256(body).digest(), body[:JUMP_SIZE],
                             placed[name][0], len(placed[name][2]))
        )
    data_objects = []
    for name, section in new_data.items():
        sym = fix.get_symbol(name)
        start = rodata.virtual_address if section is DataSection.RODATA else data.virtual_address
        data_objects.append(DataObject(name, section, sym.value - start, sym.size))

    return Package(
        target=TargetRecord(
            build_id=_build_id(base),
            image_size=_image_size(base),
            file_sha256=hashlib.sha256(baseline_path.read_bytes()).digest(),
            soname_hint=baseline_path.name,
        ),
        identity=identity or PatchIdentity("fmt-test-2", 2, "fmt-test-1", builder_version="hpkg 0.1.0"),
        functions=tuple(functions),
        added_functions=tuple(AddedFunction(n, placed[n][0], len(placed[n][2])) for n in added),
        data_objects=tuple(data_objects),
        imports=tuple(imports),
        allowed_overrides=("ipa-ra: caller main keeps registers across greet",) if identity is None else (),
        code=bytes(code),
        rodata=_section_bytes(fix, rodata) if new_data else b"",
        data=_section_bytes(fix, data) if new_data else b"",
        bss_size=0,
        relocations=tuple(relocations),
    )
