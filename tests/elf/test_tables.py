"""The builder's Image, read by hpkg's own ELF layer (elf/tables), agrees with LIEF on real binaries.

hpkg read its inputs with LIEF until the diff engine had to read 200 MB libraries in little memory;
LIEF stays the second reader that checks this one: sections, segments, symbols with their versions,
dynamic and `--emit-relocs` relocations, GOT slots, on the built samples (every flavour), system
files, and libraries gcc builds here with symbol versions and packed relative relocations (DT_RELR).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lief
import pytest

from hpkg.arch.x86_64 import RELOCATION_TYPES_BY_NUMBER
from hpkg.builder.image import load_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import build_corpus, load_samples  # noqa: E402

LIBRARY = """\
int counter;
static int a, b;
int *table[] = {&a, &b, &counter, &a};
const char *words[] = {"one", "two"};
__asm__(".symver old_current, current@VERS_1");
int old_current(void) { return -counter; }
__asm__(".symver new_current, current@@VERS_2");
int new_current(void) { return counter + *table[1] + words[1][0]; }
"""
VERSION_SCRIPT = (
    "VERS_1 { global: current; local: *; };\nVERS_2 { global: current; counter; table; words; } VERS_1;\n"
)
SYSTEM_FILES = (Path("/usr/bin/ls"), Path("/lib/x86_64-linux-gnu/libc.so.6"))


def _text(name) -> str:  # noqa: ANN001
    return name if isinstance(name, str) else name.decode("utf-8", "backslashreplace")


def _version(symbol) -> str | None:  # noqa: ANN001
    if not symbol.has_version or not symbol.symbol_version.has_auxiliary_version:
        return None
    return _text(symbol.symbol_version.symbol_version_auxiliary.name)


def _type(relocation) -> str:  # noqa: ANN001
    number = relocation.r_info(lief.ELF.Header.CLASS.ELF64) & 0xFFFFFFFF
    known = RELOCATION_TYPES_BY_NUMBER.get(number)
    return known.short_name if known is not None else f"X86_64_UNKNOWN_{number}"


def _lief_view(path: Path) -> dict:
    """What LIEF reads of a file, in the Image's terms."""
    lief.logging.disable()
    binary = lief.ELF.parse(str(path))
    sections = [s for s in binary.sections if _text(s.name)]
    alloc = {_text(s.name) for s in sections if int(s.flags) & 2}
    dynamic, static = [], []
    for r in binary.relocations:
        symbol = _text(r.symbol.name) if r.has_symbol else ""
        purpose = str(r.purpose).rsplit(".", 1)[-1]
        if purpose in ("DYNAMIC", "PLTGOT"):
            dynamic.append((r.address, _type(r), symbol, r.addend))
        elif r.has_section and _text(r.section.name) in alloc:
            static.append((r.address, _type(r), symbol, r.addend, _text(r.section.name)))

    def symbols(table) -> list:  # noqa: ANN001
        return [(_text(s.name), s.value, s.size, s.information, s.shndx, _version(s)) for s in table]

    return {
        "sections": [
            (_text(s.name), s.virtual_address, s.file_offset, s.size, int(s.flags)) for s in sections
        ],
        "loads": [(s.virtual_address, s.file_offset, s.physical_size, s.virtual_size)
                  for s in binary.segments if str(s.type).endswith(".LOAD")],  # fmt: skip
        "dynsym": symbols(binary.dynamic_symbols),
        "symtab": symbols(binary.symtab_symbols),
        "dynamic": dynamic,
        "static": static,
        "entry": binary.header.entrypoint,
    }


def _our_view(path: Path) -> dict:
    """The same facts from the Image hpkg's loader makes (symbols as it keeps them: typed and named)."""
    image = load_image(path, debug_roots=())
    def flags(s) -> int:  # noqa: ANN001
        return s.alloc * 2 | s.writable * 1 | s.executable * 4 | s.tls * 0x400

    loads = [s for s in image.segments if s.kind == "LOAD"]
    return {
        "sections": [(s.name, s.address, s.offset, s.size, flags(s)) for s in image.sections],
        "loads": [(s.address, s.offset, s.file_size, s.memory_size) for s in loads],
        "symbols": sorted((s.name, s.address, s.size, s.version) for s in image.symbols if s.dynamic),
        "static_symbols": sorted((s.name, s.address, s.size) for s in image.symbols if not s.dynamic),
        "dynamic": [(r.address, r.type, r.symbol, r.addend) for r in image.dynamic_relocations],
        "static": [(r.address, r.type, r.symbol, r.addend, r.section) for r in image.static_relocations],
        "entry": image.entry,
    }


def _kept(symbols: list, dynamic: bool) -> list:
    """LIEF's symbol entries as the Image keeps them: functions, objects, TLS and defined NOTYPE."""
    kept = []
    for name, value, size, info, shndx, version in symbols:
        kind = info & 0xF
        if kind not in (0, 1, 2, 6, 10) or not name:
            continue
        if kind == 0 and (shndx == 0 or name.startswith((".L", "$"))):
            continue
        kept.append((name, value, size, version) if dynamic else (name, value, size))
    return sorted(kept)


def _agree(path: Path) -> None:
    ours, theirs = _our_view(path), _lief_view(path)
    flag_mask = 2 | 1 | 4 | 0x400
    assert ours["sections"] == [(n, a, o, s, f & flag_mask) for n, a, o, s, f in theirs["sections"]], path
    assert ours["loads"] == theirs["loads"], path
    assert ours["entry"] == theirs["entry"], path
    assert ours["symbols"] == _kept(theirs["dynsym"], dynamic=True), path
    if ours["static_symbols"] or theirs["symtab"]:
        assert ours["static_symbols"] == _kept(theirs["symtab"], dynamic=False), path
    assert ours["dynamic"] == theirs["dynamic"], path
    assert ours["static"] == theirs["static"], path


@pytest.fixture(scope="module")
def built_libraries(tmp_path_factory) -> list[Path]:
    """A versioned library with packed relative relocations, with and without --emit-relocs."""
    directory = tmp_path_factory.mktemp("tables")
    (directory / "lib.c").write_text(LIBRARY)
    (directory / "lib.map").write_text(VERSION_SCRIPT)
    out = []
    for name, extra in (("librelr.so", []), ("librelr-emit.so", ["-Wl,--emit-relocs"])):
        subprocess.run(
            ["gcc", "-O2", "-shared", "-fPIC", "-Wl,--version-script=lib.map", "-Wl,-z,pack-relative-relocs",
             *extra, "lib.c", "-o", name],
            cwd=directory, check=True,
        )  # fmt: skip
        out.append(directory / name)
    return out


def test_built_libraries_with_versions_and_relr_read_as_lief_reads_them(built_libraries):
    for path in built_libraries:
        _agree(path)
    image = load_image(built_libraries[0], debug_roots=())
    assert {("current", "VERS_1"), ("current", "VERS_2")} <= {(s.name, s.version) for s in image.symbols}
    assert any(r.type == "X86_64_RELATIVE" for r in image.dynamic_relocations)  # from the DT_RELR bitmap


@pytest.mark.parametrize("path", SYSTEM_FILES, ids=lambda p: p.name)
def test_system_files_read_as_lief_reads_them(path):
    _agree(path)


def test_every_sample_flavour_reads_as_lief_reads_it():
    build_corpus()
    checked = 0
    for sample in load_samples():
        for flavour in sample.flavours:
            for build in ("baseline", "fixed"):
                _agree(sample.binary(build, flavour))
                checked += 1
    assert checked >= 40
