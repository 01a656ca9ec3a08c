"""ELF notes, and the one GNU build-id reader (for files, process memory and the builder alike).

A note is a 12-byte header (namesz, descsz, type), the owner name, then the descriptor; the
descriptor starts, and the next note starts, at the note's alignment counted from the note's start
(binutils' ELF_NOTE_DESC_OFFSET / ELF_NOTE_NEXT_OFFSET). The gABI asks for 8 in ELF64, but every
x86-64 toolchain aligns ELF64 notes to 4 (`.note.gnu.build-id`, `.note.ABI-tag`, in a PT_NOTE with
p_align 4); only `.note.gnu.property` is aligned to 8, in its own PT_NOTE with p_align 8. So the
container's alignment decides: 8 when p_align (or sh_addralign) is 8, else 4, as readelf reads them.
With 8, a 4-byte owner ("GNU\0") ends at offset 16 and the descriptor starts right there, not 8
bytes after the owner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from hpkg.elf.constants import NOTE_OWNER_GNU, NT_GNU_BUILD_ID, PT_NOTE
from hpkg.elf.structs import NHDR, NoteHeader, ProgramHeader


@dataclass(frozen=True)
class Note:
    """One note: its owner (without the terminating NUL), type and descriptor."""

    owner: bytes
    type: int
    descriptor: bytes


def note_alignment(container_align: int) -> int:
    """The padding of the notes in a PT_NOTE or SHT_NOTE whose p_align/sh_addralign is `container_align`."""
    return 8 if container_align == 8 else 4


def _align_up(offset: int, align: int) -> int:
    return (offset + align - 1) & ~(align - 1)


def iter_notes(blob: bytes, align: int = 4) -> Iterator[Note]:
    """Every complete note in the contents of one note segment or section (which starts aligned), in order."""
    position = 0
    while position + NHDR.size <= len(blob):
        header = NoteHeader.unpack_from(blob, position)
        name_start = position + NHDR.size
        desc_start = position + _align_up(NHDR.size + header.namesz, align)
        desc_end = desc_start + header.descsz
        if desc_end > len(blob):
            return  # truncated: the rest of the blob is not a note
        owner = bytes(blob[name_start : name_start + header.namesz]).rstrip(b"\0")
        yield Note(owner, header.type, bytes(blob[desc_start:desc_end]))
        position = _align_up(desc_end, align)


def find_build_id(blobs: Iterable[tuple[bytes, int]]) -> bytes:
    """The NT_GNU_BUILD_ID descriptor among (note contents, container alignment) pairs; b"" if none."""
    for blob, container_align in blobs:
        for note in iter_notes(blob, note_alignment(container_align)):
            if note.owner == NOTE_OWNER_GNU and note.type == NT_GNU_BUILD_ID:
                return note.descriptor
    return b""


def segment_build_id(
    program_headers: Iterable[ProgramHeader], read_segment: Callable[[ProgramHeader], bytes]
) -> bytes:
    """The GNU build-id from the PT_NOTE segments; `read_segment` reads one (from the file or memory)."""
    notes = (p for p in program_headers if p.type == PT_NOTE)
    return find_build_id((read_segment(p), p.align) for p in notes)
