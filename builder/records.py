"""The package's relocation records and section bytes, once the layout has given every NEW address an offset.

Each fixup becomes a record (section, offset, kind, space, target, addend) and its field is zeroed in
the section bytes: the loader writes it. Code edits (a relaxed `lea` turned back into `mov`) are
applied to the copied code. Short jumps between package functions are checked here too: only the
final offsets tell whether the layout kept their distance.
"""

from __future__ import annotations

from hpkg.builder.fixups import SECTION_OF_SPACE, Fixup, Fixups, Place
from hpkg.builder.layout import SectionLayout
from hpkg.builder.verdict import Reason
from hpkg.formats.model import FIELD_WIDTH, PackageSection, Relocation, TargetSpace

_FIELD_SECTION_SPACE = {section: space for space, section in SECTION_OF_SPACE.items()}


def _target_of(place: Place, layouts: dict[TargetSpace, SectionLayout]) -> int | None:
    if place.space in (TargetSpace.BASELINE, TargetSpace.IMPORT):
        return place.value
    return layouts[place.space].offset_of(place.value)


def relocation_records(
    placement: Fixups, layouts: dict[TargetSpace, SectionLayout]
) -> tuple[tuple[Relocation, ...], dict[PackageSection, bytes], list[Reason]]:
    """Relocation records with section offsets, and the section bytes with every relocated field zeroed."""
    content = {
        section: bytearray(layouts[space].content) for section, space in _FIELD_SECTION_SPACE.items()
    }
    code_layout = layouts[TargetSpace.CODE]
    for address, byte in placement.code_edits.items():
        offset = code_layout.offset_of(address)
        if offset is not None:
            content[PackageSection.CODE][offset] = byte
    records: dict[tuple[PackageSection, int], Relocation] = {}
    reasons: list[Reason] = []
    fixup: Fixup
    for fixup in placement.fixups:
        offset = layouts[_FIELD_SECTION_SPACE[fixup.section]].offset_of(fixup.field_address)
        target = _target_of(fixup.place, layouts)
        if offset is None or target is None:
            reasons.append(
                Reason(
                    "reference-unresolved", hex(fixup.field_address),
                    f"field at {fixup.field_address:#x} or its target did not get a place in the package",
                )
            )
            continue
        width = FIELD_WIDTH[fixup.kind]
        content[fixup.section][offset : offset + width] = bytes(width)
        records[(fixup.section, offset)] = Relocation(
            fixup.section, offset, fixup.kind, fixup.place.space, target, fixup.addend
        )
    relocations = tuple(records[key] for key in sorted(records))
    return relocations, {section: bytes(b) for section, b in content.items()}, reasons


def short_jump_reasons(placement: Fixups, code: SectionLayout) -> list[Reason]:
    """Short (rel8) jumps between package functions whose distance the code layout did not keep."""
    reasons = []
    for fn, location, target in placement.short_jumps:
        field, goal = code.offset_of(fn.address + location), code.offset_of(target)
        if field is None or goal is None or goal - field != target - (fn.address + location):
            reasons.append(
                Reason(
                    "reference-unresolved", fn.name,
                    f"function '{fn.name}' at +{location:#x}: a short jump to {target:#x}"
                    " that the layout cannot keep",
                )
            )
    return reasons
