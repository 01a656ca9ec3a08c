"""ELF mutants of a real compiled sample: byte-level and structure-aware mutations.

Byte-level: bit flips, byte sets, truncation. Structure-aware: one field of the ELF header, a program
header, a section header, a `.dynamic` entry, a note header, a symbol, an `.eh_frame` record length
or pointer, or a string table byte (non-UTF-8, a lost NUL terminator), set to a value from a list
that breaks parsers (0, all ones, the file size, a sign flip, off by one). A mutant is only bytes:
minimise.py and the regression cases describe it as byte patches of the original sample.
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from hpkg.elf.structs import DYN, EHDR, NHDR, PHDR, SHDR, SYM, SectionHeader

EHDR_SIZE = EHDR.size


@dataclass(frozen=True)
class Layout:
    """Where the records of one ELF file are: each found from the original sample, once."""

    phdrs: tuple[int, ...]  # file offsets of the program headers
    shdrs: tuple[int, ...]  # file offsets of the section headers
    sections: dict[str, tuple[int, int]]  # name → (file offset, size) of sections with file bytes

    @staticmethod
    def of(data: bytes) -> Layout:
        """The layout of a well-formed sample (its own headers are trusted: it is the seed)."""
        (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = EHDR.unpack_from(
            data
        )
        phdrs = tuple(phoff + i * phentsize for i in range(phnum))
        shdrs = tuple(shoff + i * shentsize for i in range(shnum))
        headers = [SectionHeader.unpack_from(data, offset) for offset in shdrs]
        names = headers[shstrndx] if shstrndx < len(headers) else None
        sections: dict[str, tuple[int, int]] = {}
        for header in headers:
            if names is None or header.type == 8:  # SHT_NOBITS: no bytes in the file
                continue
            start = names.offset + header.name
            name = data[start : data.index(b"\0", start)].decode("ascii", "replace")
            sections.setdefault(name, (header.offset, header.size))
        return Layout(phdrs, shdrs, sections)


def _interesting(rng: random.Random, old: int, bits: int, file_size: int) -> int:
    """A value that breaks parsers: boundaries, the file size, off-by-one and sign flips of `old`."""
    top = (1 << bits) - 1
    choices = (
        0, 1, top, top >> 1, (top >> 1) + 1, old + 1, old - 1, old * 2, old ^ (1 << rng.randrange(bits)),
        file_size, file_size - 1, file_size + 1, rng.randrange(top + 1), 0x1000, 0xFFFF, 0x7FFFFFFF,
    )  # fmt: skip
    return rng.choice(choices) & top


def _set_field(data: bytearray, offset: int, layout: struct.Struct, rng: random.Random) -> None:
    """Set one field of the record at `offset` to an interesting value (ident bytes count as one field)."""
    if offset < 0 or offset + layout.size > len(data):
        return
    fields = list(layout.unpack_from(data, offset))
    index = rng.randrange(len(fields))
    old = fields[index]
    if isinstance(old, bytes):
        ident = bytearray(old)
        ident[rng.randrange(4, len(ident))] = rng.randrange(256)
        fields[index] = bytes(ident)
    else:
        code = field_codes(layout)[index]
        bits = {"B": 8, "H": 16, "I": 32, "Q": 64, "q": 64, "i": 32}[code]
        value = _interesting(rng, old & ((1 << bits) - 1), bits, len(data))
        if code in "qi" and value >= 1 << (bits - 1):
            value -= 1 << bits
        fields[index] = value
    layout.pack_into(data, offset, *fields)


def field_codes(layout: struct.Struct) -> list[str]:
    """One struct code per field ("16sHH" → ["s", "H", "H"])."""
    return [token[-1] for token in re.findall(r"\d*[a-zA-Z]", layout.format)]


def _records(section: tuple[int, int] | None, size: int) -> list[int]:
    if section is None:
        return []
    start, length = section
    return list(range(start, start + length - size + 1, size))


def bit_flips(data: bytearray, layout: Layout, rng: random.Random) -> None:
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)


def byte_sets(data: bytearray, layout: Layout, rng: random.Random) -> None:
    for _ in range(rng.choice((1, 2, 4))):
        data[rng.randrange(len(data))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))


def truncation(data: bytearray, layout: Layout, rng: random.Random) -> None:
    cut = rng.choice((rng.randrange(len(data)), len(data) - rng.randrange(1, 4096), rng.randrange(4096)))
    del data[max(cut, 0) :]


def elf_header(data: bytearray, layout: Layout, rng: random.Random) -> None:
    _set_field(data, 0, EHDR, rng)


def program_header(data: bytearray, layout: Layout, rng: random.Random) -> None:
    if layout.phdrs:
        _set_field(data, rng.choice(layout.phdrs), PHDR, rng)


def section_header(data: bytearray, layout: Layout, rng: random.Random) -> None:
    if layout.shdrs:
        _set_field(data, rng.choice(layout.shdrs), SHDR, rng)


def dynamic_entry(data: bytearray, layout: Layout, rng: random.Random) -> None:
    if entries := _records(layout.sections.get(".dynamic"), DYN.size):
        _set_field(data, rng.choice(entries), DYN, rng)


def symbol(data: bytearray, layout: Layout, rng: random.Random) -> None:
    table = rng.choice((".symtab", ".dynsym"))
    if entries := _records(layout.sections.get(table), SYM.size):
        _set_field(data, rng.choice(entries), SYM, rng)


def note(data: bytearray, layout: Layout, rng: random.Random) -> None:
    notes = [v for k, v in layout.sections.items() if k.startswith(".note")]
    if notes:
        start, _ = rng.choice(notes)
        _set_field(data, start, NHDR, rng)


def string_table(data: bytearray, layout: Layout, rng: random.Random) -> None:
    """A non-UTF-8 byte in a name, or a name's NUL terminator gone (the next name, or the end, runs on)."""
    tables = [layout.sections[k] for k in (".strtab", ".dynstr", ".shstrtab") if k in layout.sections]
    if not tables:
        return
    start, size = rng.choice(tables)
    if size < 2:
        return
    position = start + rng.randrange(1, size)
    if rng.random() < 0.5:
        data[position] = rng.choice((0xFF, 0xC3, 0x80, 0xE2, 0x1B))
    else:
        nul = data.find(b"\0", position, start + size)
        data[nul if nul >= 0 else start + size - 1] = ord("A")


def eh_frame(data: bytearray, layout: Layout, rng: random.Random) -> None:
    """A CIE/FDE length, CIE pointer or pc_begin word of .eh_frame set to an interesting value."""
    section = layout.sections.get(".eh_frame")
    if section is None or section[1] < 16:
        return
    start, size = section
    record = start
    offsets = []
    while record + 8 <= start + size:
        (length,) = struct.unpack_from("<I", data, record)
        if length in (0, 0xFFFFFFFF):
            break
        offsets.append(record)
        record += 4 + length
    position = rng.choice(offsets) + rng.choice((0, 4, 8)) if offsets else start
    (old,) = struct.unpack_from("<I", data, position)
    struct.pack_into("<I", data, position, _interesting(rng, old, 32, len(data)))


Mutator = Callable[[bytearray, Layout, random.Random], None]

# Each mutator with its weight: structure-aware ones reach deeper than random bytes do.
MUTATORS: tuple[tuple[Mutator, int], ...] = (
    (bit_flips, 4), (byte_sets, 2), (truncation, 1), (elf_header, 2), (program_header, 3),
    (section_header, 4), (dynamic_entry, 3), (symbol, 3), (note, 2), (string_table, 3), (eh_frame, 3),
)  # fmt: skip


def mutate_elf(seed: bytes, layout: Layout, rng: random.Random) -> tuple[bytes, str]:
    """One mutant of `seed`: one to three mutations; the bytes and the mutators' names."""
    data = bytearray(seed)
    count = rng.choice((1, 1, 1, 2, 3))
    chosen = rng.choices([m for m, _ in MUTATORS], weights=[w for _, w in MUTATORS], k=count)
    # Truncation last: the structure-aware mutators find their records where the seed has them.
    chosen.sort(key=lambda m: m is truncation)
    for mutator in chosen:
        mutator(data, layout, rng)
    return bytes(data), "+".join(m.__name__ for m in chosen)
