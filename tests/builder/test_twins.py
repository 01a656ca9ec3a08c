"""The diff result carries every pairing later stages need: function, data-object and anonymous-data twins.

Each twin is checked against facts read with readelf, not with hpkg: two addresses are one function
when readelf names them alike, and one static variable when their symbols share a name without GCC's
numbering and hold the same initial value (each static here starts with a value of its own).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpkg.builder.diff import diff_files
from hpkg.builder.model import Status

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
int total = 5;
#ifdef FIX
static int added_first = 7;
__attribute__((noinline)) int h(int x) { static int count = 33; count += x + added_first++; return count; }
#endif
__attribute__((noinline)) int f(int x) { static int count = 11; count += x; return count; }
__attribute__((noinline)) int g(int x) { static int count = 22; count += 2 * x; return count; }
static int shared = 44;
__attribute__((noinline)) int reader(void) { return shared + total; }
__attribute__((noinline)) int writer(int x)
{
#ifdef FIX
    if (x > 100)
        return -1;
#endif
    shared += x;
    return shared;
}
int main(int argc, char **argv)
{
    int x = argc > 1 ? atoi(argv[1]) : 1;
    int s = f(x) + g(x) + writer(x) + reader();
#ifdef FIX
    s += h(x);
#endif
    printf("%d\n", s);
    return 0;
}
"""


# The program's own variables (the C runtime adds others, paired by name).
PROGRAM_OBJECTS = {"total", "added_first", "count", "shared"}


@dataclass(frozen=True)
class ElfSymbol:
    name: str
    address: int
    size: int
    kind: str


def _symbols(path: Path) -> list[ElfSymbol]:
    table = subprocess.run(["readelf", "-sW", str(path)], capture_output=True, text=True, check=True).stdout
    found = []
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[3] in ("FUNC", "OBJECT") and fields[6] != "UND":
            found.append(ElfSymbol(fields[7].split("@")[0], int(fields[1], 16), int(fields[2], 0), fields[3]))
    return found


def _initial_value(path: Path, address: int, size: int) -> bytes:
    """The file bytes at a link address, through readelf's section table (zeros in .bss)."""
    readelf = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True)
    sections = readelf.stdout
    for m in re.finditer(r"\]\s+\S+\s+(PROGBITS|NOBITS)\s+([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+)", sections):
        start, offset, length = (int(g, 16) for g in m.groups()[1:])
        if start <= address < start + length:
            if m.group(1) == "NOBITS":
                return bytes(size)
            return path.read_bytes()[offset + address - start : offset + address - start + size]
    raise AssertionError(f"{address:#x} is in no allocated section of {path}")


def _object_at(symbols: list[ElfSymbol], address: int) -> ElfSymbol | None:
    """The object symbol covering an address (a zero-size one, like crt's `__dso_handle`, its own address)."""
    return next(
        (s for s in symbols if s.kind == "OBJECT" and s.address <= address < s.address + max(s.size, 1)), None
    )


def _stable(name: str) -> str:
    return re.sub(r"\.\d+$", "", name)


def test_function_twins_are_the_pairs_of_the_diff(compiler):
    old = compiler.build("twins-old", PROGRAM, "relocs")
    new = compiler.build("twins-new", PROGRAM, "relocs", ("-DFIX",))
    diff = diff_files(old.path, new.path)
    old_names = {s.address: s.name for s in _symbols(old.path) if s.kind == "FUNC"}
    new_names = {s.address: s.name for s in _symbols(new.path) if s.kind == "FUNC"}
    assert {old_names[o] for o in diff.function_twins} >= {"f", "g", "reader", "writer", "main"}
    for old_address, new_address in diff.function_twins.items():
        assert old_names.get(old_address) == new_names.get(new_address)
    paired = {p.old.function.address: p.new.function.address for p in diff.pairs if p.old and p.new}
    assert paired == diff.function_twins
    assert {new_names[a]: f.name for a, f in diff.baseline_twins.items()}["writer"] == "writer"


def test_each_static_is_paired_with_its_own_baseline_object(compiler):
    """The fix's new `count` in h shifts GCC's numbering of the others; each still finds its own."""
    old = compiler.build("twins-old", PROGRAM, "relocs")
    new = compiler.build("twins-new", PROGRAM, "relocs", ("-DFIX",))
    diff = diff_files(old.path, new.path)
    values = {}
    for o, n in diff.data_twins.pairs:
        if o is None or n is None:
            continue
        assert _stable(o.name) == _stable(n.name)
        if _stable(n.name) in PROGRAM_OBJECTS:
            old_value = _initial_value(old.path, o.address, o.size)
            assert old_value == _initial_value(new.path, n.address, n.size), (o, n)
            values[int.from_bytes(old_value, "little")] = n.name
    assert set(values) == {5, 11, 22, 44}
    added = [n for o, n in diff.data_twins.pairs if o is None]
    assert {int.from_bytes(_initial_value(new.path, n.address, n.size), "little") for n in added} == {7, 33}
    assert all(diff.data_twins.candidates(n) == () for n in added)


def test_anonymous_data_is_what_unchanged_code_proves(compiler):
    """Stripped: an address pair is a twin only where an unchanged function uses both at the same place;
    every such pair is one variable by the symbols the unstripped builds keep."""
    old = compiler.build("twins-old", PROGRAM, "stripped")
    new = compiler.build("twins-new", PROGRAM, "stripped", ("-DFIX",))
    diff = diff_files(old.path, new.path)
    assert diff.old.stripped and diff.new.stripped
    old_symbols, new_symbols = _symbols(old.unstripped), _symbols(new.unstripped)
    named = set()
    for new_address, old_address in diff.anonymous_data.items():
        o, n = _object_at(old_symbols, old_address), _object_at(new_symbols, new_address)
        assert o is not None and n is not None and _stable(o.name) == _stable(n.name)
        assert new_address - n.address == old_address - o.address
        named.add(_stable(n.name))
    assert "count" in named  # f and g are unchanged: they prove their statics
    unchanged = [p for p in diff.pairs if p.status is Status.SAME]
    used_by_unchanged = {
        row[3][3] for p in unchanged for row in p.new.rows if row[3][0].value in ("section", "data")
    }
    assert set(diff.anonymous_data) <= used_by_unchanged
