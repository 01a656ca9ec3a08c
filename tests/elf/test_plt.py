"""The one PLT reader against binutils, and a fix that only switches which import a call goes through.

A call to an import goes to its PLT entry. When every entry is read, the diff sees the import's
name there; an entry the reader misses becomes an anonymous `.plt.got+N` target, and two such
targets compare equal — so a fix that calls `rmdir` where the baseline called `remove` would be
reported unchanged. Each layout ld writes is built with gcc: 8-byte `.plt.got` entries (functions
whose address is also taken), 16-byte IBT `.plt.got` entries, and 16-byte IBT `.plt.sec` entries.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpkg.builder.baseline_index import plt_slots
from hpkg.builder.image import load_image
from hpkg.elf.file import ElfFile
from hpkg.elf.plt import PLT_SECTIONS, plt_entries

# `pick` is the function the fix changes: the baseline calls remove(), the fix rmdir() (same type).
PROGRAM = """\
#include <stdio.h>
#include <unistd.h>

typedef int (*path_function)(const char *);
path_function volatile seen[5];

/* Reading these functions' addresses loads them from their GOT slots; as they are also called, ld
   gives each a .plt.got entry that jumps through that slot instead of a lazy .plt entry. */
__attribute__((noinline)) void take_addresses(void) {
#ifdef TAKE_ADDRESSES
    seen[0] = remove;
    seen[1] = unlink;
    seen[2] = rmdir;
    seen[3] = chdir;
    seen[4] = puts;
#endif
}

__attribute__((noinline)) int call_all(const char *path) {
    return remove(path) + unlink(path) + rmdir(path) + chdir(path) + puts(path);
}

__attribute__((noinline)) int pick(const char *path) { return CALLED(path); }

int main(int argc, char **argv) {
    take_addresses();
    return argc > 2 ? call_all(argv[1]) : pick(argc > 1 ? argv[1] : "");
}
"""


@dataclass(frozen=True)
class Layout:
    """A PLT layout: the gcc flags that make it, the section calls go to, and its entry size."""

    flags: tuple[str, ...]
    section: str
    entry_size: int


LAYOUTS = {
    "plt.got-8": Layout(("-fcf-protection=none", "-DTAKE_ADDRESSES"), ".plt.got", 8),
    "plt.got-16-ibt": Layout(("-fcf-protection=full", "-Wl,-z,ibtplt", "-DTAKE_ADDRESSES"), ".plt.got", 16),
    "plt.sec-16-ibt": Layout(("-fcf-protection=full", "-Wl,-z,ibtplt"), ".plt.sec", 16),
}


def _build(directory: Path, called: str, flags: tuple[str, ...]) -> Path:
    # The same file name for baseline and fix, each compiled from its own directory.
    directory.mkdir(parents=True)
    (directory / "prog.c").write_text(PROGRAM.replace("CALLED", called))
    subprocess.run(["gcc", "-O2", *flags, "prog.c", "-o", "prog"], cwd=directory, check=True)
    return directory / "prog"


def _objdump_entries(path: Path, section: str) -> dict[int, str]:
    """PLT entry address → import name, as `objdump -d -j SECTION` labels the entries (`name@plt`)."""
    out = subprocess.run(["objdump", "-d", "-j", section, str(path)], capture_output=True, text=True).stdout
    return {int(a, 16): name for a, name in re.findall(r"^([0-9a-f]+) <([^>@]+)@plt>:", out, re.M)}


def _section_headers(path: Path) -> dict[str, tuple[int, int, int]]:
    """Section name → (address, size, sh_entsize), from `readelf -SW`."""
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    found = {}
    for match in re.finditer(r"\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", out):
        name, address, size, entsize = match.groups()
        found[name] = (int(address, 16), int(size, 16), int(entsize, 16))
    return found


def _call_target(path: Path, function: str) -> int:
    """Where `function`'s one call (or tail jump) to an import goes, as objdump decodes it."""
    out = subprocess.run(["objdump", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    body = out.split(f"<{function}>:\n", 1)[1].split("\n\n", 1)[0]
    [target] = re.findall(r"\s(?:call|jmp)\s+([0-9a-f]+) <\w+@plt>", body)
    return int(target, 16)


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def pair(request, tmp_path_factory):
    layout = LAYOUTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    old = _build(root / "baseline", "remove", layout.flags)
    return layout, old, _build(root / "fix", "rmdir", layout.flags)


def test_the_calls_go_through_the_layout_under_test(pair):
    """The premise, checked with binutils: `pick` calls a PLT entry of the section, sized as stated."""
    layout, old, new = pair
    for path, name in ((old, "remove"), (new, "rmdir")):
        address, size, entsize = _section_headers(path)[layout.section]
        entries = _objdump_entries(path, layout.section)
        assert entsize == layout.entry_size
        assert sorted(entries) == list(range(address, address + size, layout.entry_size))
        assert entries[_call_target(path, "pick")] == name


def test_every_entry_is_read_by_the_elf_layer_and_the_builder(pair):
    layout, old, new = pair
    for path in (old, new):
        elf = ElfFile(path)
        image = load_image(path)
        for section in (s for s in elf.section_headers if elf.section_name(s) in PLT_SECTIONS):
            name = elf.section_name(section)
            expected = set(_objdump_entries(path, name))
            read = plt_entries(name, section.addr, elf.section_contents(section), section.entsize)
            assert {e.address for e in read} == expected, name
            # Without sh_entsize (the builder's Image keeps none), the instruction pattern gives the size.
            inferred = plt_entries(name, section.addr, elf.section_contents(section))
            assert inferred == read, name
        slots = plt_slots(image)
        assert set(_objdump_entries(path, layout.section)) <= set(slots)
        plt_of = {i.name: i.plt_address for i in image.imports}
        for address, name in _objdump_entries(path, layout.section).items():
            assert plt_of[name] == address


def test_a_call_switched_to_another_import_is_reported_changed(pair):
    _, old, new = pair
    diff = subprocess.run(
        [sys.executable, "-m", "hpkg", "diff", str(old), str(new), "--json"], capture_output=True, text=True
    )
    assert diff.returncode == 0, diff.stderr
    assert [c["name"] for c in json.loads(diff.stdout)["changed"]] == ["pick"]
    listing = subprocess.run(
        [sys.executable, "-m", "hpkg", "diff", str(old), str(new), "--function", "pick"],
        capture_output=True, text=True,
    )
    assert listing.returncode == 0, listing.stderr
    removed = [line for line in listing.stdout.splitlines() if line.startswith("-")]
    added = [line for line in listing.stdout.splitlines() if line.startswith("+")]
    assert any("remove@GLIBC" in line for line in removed) and any("rmdir@GLIBC" in line for line in added)


def test_every_plt_got_entry_of_ls_is_read():
    """/usr/bin/ls (Debian's coreutils) has 8-byte .plt.got entries; none may be skipped."""
    path = Path("/usr/bin/ls")
    address, size, entsize = _section_headers(path)[".plt.got"]
    assert entsize == 8 and size >= 2 * entsize
    expected = _objdump_entries(path, ".plt.got")
    assert sorted(expected) == list(range(address, address + size, entsize))
    elf = ElfFile(path)
    section = elf.section_header(".plt.got")
    assert section is not None
    read = plt_entries(".plt.got", section.addr, elf.section_contents(section), section.entsize)
    assert [e.address for e in read] == sorted(expected)
    image = load_image(path)
    assert set(expected) <= set(plt_slots(image))
    plt_of = {i.name: i.plt_address for i in image.imports}
    assert {name: plt_of[name] for name in expected.values()} == {n: a for a, n in expected.items()}
