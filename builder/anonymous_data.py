"""Compare the initial bytes of writable data that no symbol names (a stripped build, no debug file).

Without symbols the per-object comparison (data.py) has nothing to compare, so a fix that only
changes a global's initializer looked like no change at all and `hpkg build` said "nothing to patch".
A running process owns its writable data, so such a change cannot be hot-patched: it must be seen
and refused. Without symbols the objects cannot be told apart, so the unit compared is the section:
the same size, the bytes compared at the same offsets (relocated pointer words said as what they
point to); another size, the layout moved and nothing can be paired.

Only sections that hold program variables are compared: those past the PT_GNU_RELRO range (which is
read-only once the process runs, and whose pointers the function comparison follows) and not the
linker's own tables.
"""

from __future__ import annotations

from hpkg.builder.data_twins import RUNTIME_OBJECTS
from hpkg.builder.model import DataChange, DataChangeKind, Image, Section, Symbol, SymbolKind

# Writable sections the linker and the C runtime fill: their bytes say nothing about the fix.
LINKER_TABLES = frozenset(
    {".got", ".got.plt", ".dynamic", ".init_array", ".fini_array", ".preinit_array", ".tm_clone_table"}
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


def _named_sections(image: Image) -> set[str]:
    """Sections in which a symbol names some program variable: data.py compares those by object."""
    return {
        s.section
        for s in image.symbols
        if s.kind in (SymbolKind.OBJECT, SymbolKind.TLS) and s.defined and s.name not in RUNTIME_OBJECTS
    }


def _differing_runs(
    old: Image, new: Image, before: Section, after: Section,
    old_words: dict[int, str], new_words: dict[int, str],
) -> list[tuple[int, int]]:
    """(offset, length) of each run of bytes that differ between two sections of the same size, a
    relocated pointer word (on either side) compared as what it points to; runs closer than a word
    are joined."""
    old_raw, new_raw = old.read(before.address, before.size), new.read(after.address, after.size)
    runs: list[tuple[int, int]] = []
    offset = 0
    while offset < len(old_raw):
        old_word, new_word = old_words.get(before.address + offset), new_words.get(after.address + offset)
        if (old_word is not None or new_word is not None) and offset + 8 <= len(old_raw):
            width = 8
            same = old_word == new_word and (
                old_word is not None or old_raw[offset : offset + 8] == new_raw[offset : offset + 8]
            )
        else:
            width = 1
            same = old_raw[offset] == new_raw[offset]
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
    old: Image, new: Image, old_words: dict[int, str], new_words: dict[int, str]
) -> tuple[DataChange, ...]:
    """Changes of the initial bytes of variable sections that no symbol names on either side.

    `old_words`/`new_words` describe each relocated pointer word (data.py), fix functions named as
    their baseline twins, so a pointer that only moved with its target compares equal.
    """
    named = _named_sections(old) | _named_sections(new)
    old_sections, new_sections = _variable_sections(old), _variable_sections(new)
    changes: list[DataChange] = []
    for name in sorted(old_sections.keys() | new_sections.keys()):
        if name in named:
            continue
        before, after = old_sections.get(name), new_sections.get(name)
        if before is None or after is None or before.size != after.size:
            # A variable section appeared, went away or changed size: its variables moved.
            kind = DataChangeKind.SIZE
            changes.append(DataChange(
                name, kind,
                _region(before, 0, before.size) if before else None,
                _region(after, 0, after.size) if after else None,
                anonymous=True,
            ))
            continue
        for offset, size in _differing_runs(old, new, before, after, old_words, new_words):
            region = _region(before, offset, size)
            changes.append(DataChange(
                region.name, DataChangeKind.VALUE, region, _region(after, offset, size), anonymous=True
            ))
    return tuple(changes)
