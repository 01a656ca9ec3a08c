"""Function discovery and the Reference records a package builder relies on."""

from __future__ import annotations

import struct

import pytest
from test_diff_cases import (
    INSERT_ENTRIES,
    INSERT_OLD,
    STATIC_ENTRIES,
    STATIC_OLD,
    STRING_ENTRIES,
    STRING_OLD,
    SWITCH_ENTRIES,
    SWITCH_OLD,
    program,
)

from hpkg.builder.canon import canonicalize_image
from hpkg.builder.functions import discover_functions
from hpkg.builder.image import load_image
from hpkg.builder.model import FunctionOrigin, ReferenceKind, SymbolKind, TargetKind

MIXED = program(SWITCH_OLD + STATIC_OLD + STRING_OLD + INSERT_OLD, f"{SWITCH_ENTRIES}, {STATIC_ENTRIES}, "
                f"{STRING_ENTRIES}, {INSERT_ENTRIES}")
SOURCE_FUNCTIONS = {"classify", "classify2", "early", "counter", "greet", "other", "greet_len", "other_len",
                    "f1", "f2", "f3", "f4", "main"}


def _canonical(path, use_relocations: bool):
    image = load_image(path)
    functions = discover_functions(image)
    return image, {c.function.name: c for c in canonicalize_image(image, functions, use_relocations)}


def test_stripped_binary_yields_every_compiled_function_from_eh_frame(compiler):
    build = compiler.build("mixed", MIXED, "stripped")
    symbols = {
        s.name: s for s in load_image(build.unstripped).symbols if s.kind is SymbolKind.FUNCTION and s.defined
    }
    found = {(f.address, f.size) for f in discover_functions(load_image(build.path))}
    for name in SOURCE_FUNCTIONS:
        assert (symbols[name].address, symbols[name].size) in found, name
    assert all(f.name.startswith("sub_") for f in discover_functions(load_image(build.path)))


@pytest.mark.parametrize(
    ("flavour", "extra"),
    [("relocs", ()), ("nopie", ("-Wl,--emit-relocs",)), ("shared", ("-Wl,--emit-relocs",))],
)
def test_relocation_and_disassembly_sources_yield_the_same_references(compiler, flavour, extra):
    path = compiler.build("mixed", MIXED, flavour, extra).path
    image, from_relocations = _canonical(path, True)
    assert image.has_static_relocations
    _, from_disassembly = _canonical(path, False)
    assert from_relocations.keys() == from_disassembly.keys()
    # The program's own functions (crt code refers to weak undefined symbols at address 0, which
    # only a relocation reveals).
    for name in SOURCE_FUNCTIONS:
        assert from_relocations[name].references == from_disassembly[name].references, name
        assert from_relocations[name].masked == from_disassembly[name].masked, name


@pytest.mark.parametrize("flavour", ("plain", "nopie"))
def test_reference_records_locate_width_kind_and_target(compiler, flavour):
    image, functions = _canonical(compiler.build("mixed", MIXED, flavour).path, False)
    greet_len = functions["greet_len"]
    calls = [r for r in greet_len.references if r.target.kind is not TargetKind.INTERNAL]
    # greet_len calls greet and strlen; each reference field decodes back to its target.
    assert {r.target.name for r in calls} >= {"greet"}
    assert any(r.target.kind is TargetKind.IMPORT and r.target.name.startswith("strlen@GLIBC") for r in calls)
    for fn in functions.values():
        for ref in fn.references:
            field = fn.function.code[ref.location : ref.location + ref.width]
            value = int.from_bytes(field, "little", signed=ref.kind in (ReferenceKind.PC32, ReferenceKind.PC8,
                                                                          ReferenceKind.GOTPC32))
            if ref.kind in (ReferenceKind.PC32, ReferenceKind.PC8, ReferenceKind.GOTPC32):
                place = fn.function.address + ref.location
                assert value == ref.target.address + ref.addend - place
            elif ref.kind in (ReferenceKind.ABS32, ReferenceKind.ABS32S):
                assert value == ref.target.address + ref.addend
    counter = functions["counter"]
    [data] = {r.target for r in counter.references if r.target.kind is TargetKind.DATA}
    assert data.name.startswith("count.") and data.offset == 0


@pytest.mark.parametrize("flavour", ("plain", "nopie"))
def test_switch_jump_table_is_recovered_as_in_function_targets(compiler, flavour):
    image, functions = _canonical(compiler.build("mixed", MIXED, flavour).path, False)
    [table] = [r.target for r in functions["classify"].references if r.target.kind is TargetKind.JUMP_TABLE]
    # switch (x & 7): eight cases, every entry an instruction of classify.
    assert len(table.entries) == 8
    size = functions["classify"].function.size
    assert all(0 <= entry < size for entry in table.entries)
    width = 8 if flavour == "nopie" else 4
    raw = image.read(table.address, 8 * width)
    assert len(raw) == 8 * width and struct.unpack(f"<8{'Q' if width == 8 else 'i'}", raw)


@pytest.mark.parametrize(
    "flags",
    [
        ("-Wl,-z,lazy",),
        ("-Wl,-z,now",),
        ("-fcf-protection=full", "-Wl,-z,ibtplt"),  # IBT: calls go to .plt.sec
        ("-fno-plt",),  # no PLT: calls go through GOT slots directly
    ],
)
def test_calls_to_imports_resolve_to_versioned_names_in_every_plt_layout(compiler, flags):
    path = compiler.build("mixed", MIXED, "plain", flags).path
    image, functions = _canonical(path, False)
    imports = {i.name: i for i in image.imports}
    assert imports["printf"].version == "GLIBC_2.2.5"
    assert imports["printf"].plt_address or imports["printf"].got_address
    called = {r.target.name for r in functions["main"].references if r.target.kind is TargetKind.IMPORT}
    assert "printf@GLIBC_2.2.5" in called
    assert not [r for r in functions["main"].references if r.target.kind is TargetKind.SECTION]


COLD = """
#include <stdlib.h>
__attribute__((cold, noinline)) void report(int x) { fprintf(stderr, "bad %d\\n", x); }
__attribute__((noinline)) int work(int x) {
    if (x > 1000) { report(x); report(x + 1); abort(); }
    return x * 3;
}
static __attribute__((noinline)) int helper(int x, int y) { return x * y + 1; }
int pub(int x) { return helper(x, 7); }
"""


def test_split_parts_and_clones_know_their_origin(compiler):
    image = load_image(compiler.build("cold", program(COLD, "work, pub"), "plain").path)
    functions = {f.name: f for f in discover_functions(image)}
    assert functions["work.cold"].parent == "work"
    assert functions["work.cold"].origin is FunctionOrigin.COLD
    assert functions["helper.constprop.0"].parent == "helper"
    assert functions["helper.constprop.0"].origin is FunctionOrigin.CLONE
    assert functions["work"].parent is None and functions["work"].origin is FunctionOrigin.SOURCE


def test_relocated_words_keep_the_last_value_of_each_word_in_any_table_order(compiler):
    """The pointer words R_X86_64_RELATIVE fills: a linker's table (sorted by address) goes straight
    into the arrays, and a table out of order or relocating a word twice reads as ld.so applies it."""
    from hpkg.builder.symbolize import RelocatedWords

    image = load_image(compiler.build("mixed", MIXED, "shared", ("-Wl,--emit-relocs",)).path)
    relative = list(image.dynamic_relocations.relative())
    assert len(relative) > 2  # the switch and callback tables of a PIC library
    expected = dict(relative)
    words = RelocatedWords(relative)
    assert list(words.addresses) == sorted(expected)
    assert list(words.values) == [expected[a] for a in sorted(expected)]
    first_address, first_value = relative[0]
    shuffled = relative[::-1] + [(first_address, first_value + 8)]  # a word relocated twice: the last wins
    words = RelocatedWords(shuffled)
    assert list(words.addresses) == sorted(expected)
    assert words.values[words.index(first_address)] == first_value + 8
    assert [words.values[words.index(a)] for a in expected if a != first_address] == [
        v for a, v in expected.items() if a != first_address
    ]
