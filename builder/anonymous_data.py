"""Compare the initial bytes of writable data that no symbol names (stripped builds, no debug file).

Without symbols the per-object comparison (data.py) has nothing to compare, so a fix that only
changes a global's initializer looked like no change at all and `hpkg build` said "nothing to patch".
A running process owns its writable data, so such a change cannot be hot-patched: it must be seen
and refused. The bytes compared are those no data symbol names on either side: a whole section in
a stripped executable, the static variables between the exported ones in a library that has only
.dynsym, nothing but zero padding in a full build. Sections of the same size are compared at the
same offsets (relocated pointer words said as what they point to); a section of another size whose
unnamed bytes are not all zeros is a layout change, as nothing can pair them.

Only sections that hold program variables are compared: those past the PT_GNU_RELRO range (which is
read-only once the process runs, and whose pointers the function comparison follows) and not the
linker's own tables.
"""

from __future__ import annotations

from typing import Protocol

from hpkg.builder.heap import ResidentPages
from hpkg.builder.model import DataChange, DataChangeKind, Image, Section, Symbol, SymbolKind


class PointerWords(Protocol):
    """What each relocated pointer word of an image points to, by address (data.py builds it)."""

    def get(self, address: int) -> str | None: ...


# Writable sections the linker and the C runtime fill: their bytes say nothing about the fix. A PE
# image's `.idata` holds its import tables and IAT (the loader fills it, like .got), `.CRT` mingw's
# initializer and TLS-callback pointer tables (like .init_array).
LINKER_TABLES = frozenset(
    {".got", ".got.plt", ".dynamic", ".init_array", ".fini_array", ".preinit_array", ".tm_clone_table",
     ".idata", ".CRT"}
)
# Differences closer than a pointer word are one change: one variable, most likely.
_JOIN = 8


def _variable_sections(image: Image) -> dict[str, Section]:
    """Initialised writable sections that may hold program variables, by name."""
    relro = [(s.address, s.address + s.memory_size) for s in image.segments if s.kind == "GNU_RELRO"]
    found = {}
    for section in image.sections:
        if not section.alloc or not section.writable or section.executable or section.nobits:
            continue
        if section.name in LINKER_TABLES or section.size == 0:
            continue
        if any(start <= section.address < end for start, end in relro):
            continue
        found[section.name] = section
    return found


def _covered(image: Image, section: Section) -> bytearray:
    """One flag per byte of the section: 1 where a data symbol (the runtime's own included) names it.

    In a full build that is every variable; in a library with only .dynsym, the exported ones, and
    its static variables lie in the bytes left uncovered."""
    flags = bytearray(section.size)
    for s in image.symbols:
        if s.kind not in (SymbolKind.OBJECT, SymbolKind.TLS) or not s.defined or s.section != section.name:
            continue
        low = max(s.address - section.address, 0)
        # A zero-size runtime marker such as __dso_handle stands for the pointer word at its address.
        high = min(s.address - section.address + (s.size or 8), section.size)
        if low < high:
            flags[low:high] = b"\x01" * (high - low)
    return flags


def _uncovered_content(image: Image, section: Section, covered: bytearray) -> bool:
    """Whether any byte no symbol names is non-zero (padding between variables is zeros)."""
    raw = image.read(section.address, section.size)
    return any(b and not c for b, c in zip(raw, covered, strict=False))


def _differing_runs(
    old: Image, new: Image, before: Section, after: Section,
    old_words: PointerWords, new_words: PointerWords, covered: bytearray, resident: ResidentPages,
) -> list[tuple[int, int]]:
    """(offset, length) of each run of bytes no symbol names (`covered`, both sides) that differ
    between two sections of the same size, a relocated pointer word (on either side) compared as
    what it points to; runs closer than a word are joined."""
    old_raw, new_raw = old.read(before.address, before.size), new.read(after.address, after.size)
    old.release_pages()  # copied: the sections' file pages are not read again
    new.release_pages()
    runs: list[tuple[int, int]] = []
    offset = steps = 0
    while offset < len(old_raw):
        steps += 1
        if steps & 0x1FFF == 0:
            resident.check()  # describing pointer words reads what they point to (string literals)
        old_word, new_word = old_words.get(before.address + offset), new_words.get(after.address + offset)
        if (old_word is not None or new_word is not None) and offset + 8 <= len(old_raw):
            width = 8
            same = any(covered[offset : offset + 8]) or old_word == new_word and (
                old_word is not None or old_raw[offset : offset + 8] == new_raw[offset : offset + 8]
            )
        else:
            width = 1
            same = old_raw[offset] == new_raw[offset] or bool(covered[offset])
        if not same:
            if runs and offset - (runs[-1][0] + runs[-1][1]) < _JOIN:
                runs[-1] = (runs[-1][0], offset + width - runs[-1][0])
            else:
                runs.append((offset, width))
        offset += width
    return runs


def _region(section: Section, offset: int, size: int) -> Symbol:
    """A stand-in symbol for bytes no symbol names: `.data+0x10`, local to the section."""
    name = f"{section.name}+{offset:#x}" if offset or size != section.size else section.name
    return Symbol(name, section.address + offset, size, SymbolKind.OBJECT, True, section.name)


def diff_anonymous_data(
    old: Image, new: Image, old_words: PointerWords, new_words: PointerWords
) -> tuple[DataChange, ...]:
    """Changes of the initial bytes of variable sections that no symbol names on either side.

    `old_words`/`new_words` describe each relocated pointer word (data.py), fix functions named as
    their baseline twins, so a pointer that only moved with its target compares equal.
    """
    old_sections, new_sections = _variable_sections(old), _variable_sections(new)
    changes: list[DataChange] = []
    resident = ResidentPages((old, new))
    for name in sorted(old_sections.keys() | new_sections.keys()):
        resident.check()
        before, after = old_sections.get(name), new_sections.get(name)
        old_covered = _covered(old, before) if before else bytearray()
        new_covered = _covered(new, after) if after else bytearray()
        if before is None or after is None or before.size != after.size:
            # The section appeared, went away or changed size: what no symbol names cannot be paired.
            if (before and _uncovered_content(old, before, old_covered)) or (
                after and _uncovered_content(new, after, new_covered)
            ):
                changes.append(DataChange(
                    name, DataChangeKind.SIZE,
                    _region(before, 0, before.size) if before else None,
                    _region(after, 0, after.size) if after else None,
                    anonymous=True,
                ))
            continue
        covered = bytearray(a | b for a, b in zip(old_covered, new_covered, strict=True))
        for offset, size in _differing_runs(old, new, before, after, old_words, new_words, covered, resident):
            region = _region(before, offset, size)
            changes.append(DataChange(
                region.name, DataChangeKind.VALUE, region, _region(after, offset, size), anonymous=True
            ))
    return tuple(changes)
