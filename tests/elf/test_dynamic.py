"""Dynamic symbols, versions, DT_NEEDED/DT_RUNPATH and import slots of hpkg.elf, against readelf and LIEF.

The loader reads these without LIEF; readelf is the reference for names and versions, and the
builder's Image (LIEF symbols and relocations) the reference for each import's PLT entry and GOT slot.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpkg.builder.image import load_image
from hpkg.elf.dynamic import dynamic_symbols, library_search_path, needed_libraries
from hpkg.elf.file import ElfFile
from hpkg.elf.imports import read_imports

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import build_corpus, load_samples  # noqa: E402

LIBRARY = """\
int counter;
__asm__(".symver old_current, current@VERS_1");
int old_current(void) { return -counter; }
__asm__(".symver new_current, current@@VERS_2");
int new_current(void) { return counter; }
"""
VERSION_SCRIPT = "VERS_1 { global: current; local: *; };\nVERS_2 { global: current; counter; } VERS_1;\n"
SYSTEM_FILES = ("/usr/bin/ls", "/lib/x86_64-linux-gnu/libc.so.6")


def _readelf(*args: str | Path) -> str:
    return subprocess.run(["readelf", *map(str, args)], capture_output=True, text=True, check=True).stdout


def _readelf_dynamic_symbols(path: Path) -> list[tuple[str, str | None, bool]]:
    """(name, version, default) of each .dynsym entry as readelf prints it: `name@@VER` is a default
    version the file defines, `name@VER` a hidden or needed one; a version's own symbol shows bare."""
    found = []
    for line in _readelf("--dyn-syms", "-W", path).splitlines():
        fields = line.split(None, 7)
        if len(fields) >= 7 and fields[0].rstrip(":").isdigit():
            spelled = re.sub(r" \(\d+\)$", "", fields[7]) if len(fields) == 8 else ""
            name, at, version = spelled.partition("@")
            found.append((name, version.lstrip("@") or None, version.startswith("@")))
    return found


def _as_readelf_shows(symbols, own_versions: set[str]) -> list[tuple[str, str | None, bool]]:  # noqa: ANN001
    """Our symbols in readelf's terms: `@@` only for a default version the file defines itself."""
    shown = []
    for s in symbols:
        version = None if s.version == s.name else s.version  # VERS_1's own ABS symbol shows bare
        shown.append((s.name, version, version in own_versions and s.defined and not s.hidden))
    return shown


def _own_versions(path: Path) -> set[str]:
    """The versions a file defines (.gnu.version_d), from readelf -V."""
    parts = _readelf("-VW", path).split("Version definition section", 1)
    if len(parts) == 1:
        return set()
    return set(re.findall(r"Name: (\S+)", parts[1].split("Version needs section", 1)[0]))


def _spelled(symbol) -> str:  # noqa: ANN001
    if symbol.version is None:
        return symbol.name
    return f"{symbol.name}{'@' if symbol.hidden or not symbol.defined else '@@'}{symbol.version}"


@pytest.fixture(scope="module")
def versioned_library(tmp_path_factory) -> Path:
    """A shared library defining `current` at two versions (VERS_1 hidden, VERS_2 the default)."""
    directory = tmp_path_factory.mktemp("versions")
    (directory / "lib.c").write_text(LIBRARY)
    (directory / "lib.map").write_text(VERSION_SCRIPT)
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-Wl,--version-script=lib.map", "-Wl,-rpath,$ORIGIN/plugins",
         "lib.c", "-o", "libversions.so"],
        cwd=directory, check=True,
    )  # fmt: skip
    return directory / "libversions.so"


@pytest.mark.parametrize("path", SYSTEM_FILES)
def test_dynamic_symbols_match_readelf(path):
    symbols = dynamic_symbols(ElfFile(path))
    assert _as_readelf_shows(symbols, _own_versions(Path(path))) == _readelf_dynamic_symbols(Path(path))
    assert any(s.hidden for s in symbols) or path.endswith("ls")  # libc keeps old, hidden versions


def test_versions_needed_and_search_path_of_a_built_library(versioned_library):
    elf = ElfFile(versioned_library)
    spelled = {_spelled(s) for s in dynamic_symbols(elf)}
    assert {"current@VERS_1", "current@@VERS_2", "counter@@VERS_2"} <= spelled
    shown = _as_readelf_shows(dynamic_symbols(elf), _own_versions(versioned_library))
    assert shown == _readelf_dynamic_symbols(versioned_library)
    dynamic = _readelf("-dW", versioned_library)
    assert list(needed_libraries(elf)) == re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", dynamic)
    assert library_search_path(elf) == "$ORIGIN/plugins"
    assert re.search(r"\(RUNPATH\)\s+Library runpath: \[\$ORIGIN/plugins\]", dynamic)


def _import_files() -> list[Path]:
    build_corpus()
    files = [Path(p) for p in SYSTEM_FILES]
    for sample in load_samples():
        for flavour in sample.flavours:
            files.append(sample.binary("baseline", flavour))
    return files


def test_import_slots_match_the_builders_image():
    for path in _import_files():
        ours = [(i.name, i.version, i.plt_address, i.got_address) for i in read_imports(ElfFile(path))]
        theirs = [(i.name, i.version, i.plt_address, i.got_address) for i in load_image(path).imports]
        assert ours == theirs, path
