"""Notes and the GNU build-id read by hpkg.elf from a file, a debug file and process memory, against readelf.

gcc with -fcf-protection writes `.note.gnu.property` in its own PT_NOTE with p_align 8 (8-byte
padding, a 4-byte owner "GNU\\0" then the descriptor at offset 16) beside the 4-aligned PT_NOTE of
the build-id and ABI tag: both alignments are read the way binutils reads them.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from hpkg.elf.constants import PT_NOTE
from hpkg.elf.file import ElfFile, read_build_id
from hpkg.elf.notes import iter_notes, note_alignment
from hpkg.loader import procfs

PROGRAM = """\
#include <stdio.h>
int main(void) {
    return getchar() == EOF ? 0 : 1;  /* waits on stdin, so the test can read its memory */
}
"""


def _readelf(*args: str | Path) -> str:
    return subprocess.run(["readelf", *map(str, args)], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("notes")
    (directory / "wait.c").write_text(PROGRAM)
    flags = ("-O2", "-fcf-protection=full", "-Wl,--build-id=sha1")
    subprocess.run(["gcc", *flags, "wait.c", "-o", "wait"], cwd=directory, check=True)
    return directory / "wait"


def _readelf_build_id(path: Path) -> str:
    [found] = re.findall(r"Build ID: ([0-9a-f]+)", _readelf("-n", path))
    return found


def test_notes_of_both_alignments_match_readelf(program):
    elf = ElfFile(program)
    segments = [p for p in elf.program_headers if p.type == PT_NOTE]
    assert sorted({p.align for p in segments}) == [4, 8]  # the premise: both alignments are present
    ours = [
        (note.owner.decode(), len(note.descriptor))
        for p in segments
        for note in iter_notes(elf.data[p.offset : p.offset + p.filesz], note_alignment(p.align))
    ]
    listed = re.findall(r"^\s+(\S+)\s+0x([0-9a-f]+)\s", _readelf("-nW", program), re.M)
    theirs = [(owner, int(size, 16)) for owner, size in listed]
    assert ours == theirs
    # The property note's descriptor is the section's bytes after its 16-byte header and owner.
    [section] = [s for s in elf.section_headers if elf.section_name(s) == ".note.gnu.property"]
    [segment] = [p for p in segments if p.align == 8]
    [note] = iter_notes(elf.data[segment.offset : segment.offset + segment.filesz], 8)
    assert note.descriptor == elf.data[section.offset + 16 : section.offset + section.size]


def test_build_id_from_file_debug_file_and_memory_agree_with_readelf(program, tmp_path):
    expected = _readelf_build_id(program)
    assert ElfFile(program).build_id.hex() == expected
    stripped, debug = tmp_path / "wait.stripped", tmp_path / "wait.debug"
    subprocess.run(["strip", "-o", str(stripped), str(program)], check=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(program), str(debug)], check=True)
    for path in (stripped, debug):
        assert read_build_id(path.read_bytes()).hex() == _readelf_build_id(path) == expected
    process = subprocess.Popen([str(program)], stdin=subprocess.PIPE)
    try:
        # Popen returns once the child is forked: wait for the exec to map the program.
        deadline = time.monotonic() + 20
        while str(program) not in Path(f"/proc/{process.pid}/maps").read_text():
            assert time.monotonic() < deadline, "the program never started"
            time.sleep(0.005)
        for from_memory in (False, True):
            images = procfs.list_images(process.pid, from_memory=from_memory)
            [image] = [i for i in images if i.path == str(program)]
            assert image.build_id == expected
    finally:
        process.communicate(b"")
