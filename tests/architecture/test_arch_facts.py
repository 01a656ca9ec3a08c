"""x86-64 facts kept once: the package format's relocation kinds agree with the psABI table of hpkg.arch."""

from __future__ import annotations

import pytest

from hpkg.arch.x86_64 import (
    GOT_RELOCATIONS,
    RELOCATION_TYPES,
    RELOCATION_TYPES_BY_NUMBER,
    UnknownRelocationType,
    relocation_recipe,
    relocation_type,
)
from hpkg.builder.model import ReferenceKind
from hpkg.formats.model import FIELD_WIDTH, RelocationKind


def test_every_package_relocation_kind_is_the_psabi_type_of_that_name():
    for kind in RelocationKind:
        entry = relocation_type(kind.name)
        assert entry.number == kind.value
        assert entry.width == FIELD_WIDTH[kind]
        assert entry.fits(0) and not entry.fits(1 << 64)


def test_the_table_is_keyed_by_name_and_number_without_clashes():
    assert len(RELOCATION_TYPES) == len(RELOCATION_TYPES_BY_NUMBER)
    assert all(RELOCATION_TYPES_BY_NUMBER[t.number] is t for t in RELOCATION_TYPES.values())
    assert {"X86_64_GLOB_DAT", "X86_64_JUMP_SLOT", "X86_64_64", "X86_64_TPOFF64"} == GOT_RELOCATIONS


def test_unknown_types_are_named_and_types_without_a_field_name_nothing():
    with pytest.raises(UnknownRelocationType, match="R_X86_64_NO_SUCH"):
        relocation_type("R_X86_64_NO_SUCH")
    assert relocation_recipe("X86_64_SIZE64") is None  # a size, not a reference
    assert relocation_recipe("X86_64_NO_SUCH") is None
    assert relocation_recipe("X86_64_PLT32") == (ReferenceKind.PC32, 4)
    assert relocation_type("X86_64_PLT32") is relocation_type("R_X86_64_PLT32")


def test_the_builders_reference_kind_is_the_arch_field_kind():
    from hpkg.arch.x86_64 import FieldKind

    assert ReferenceKind is FieldKind
