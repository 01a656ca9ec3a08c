"""FDE bounds the bench reads (through the builder's parser, hpkg.elf.ehframe) agree with binutils
readelf on gcc output."""

import re
import subprocess
from pathlib import Path

import pytest

from bench.bytecompare import load_code
from bench.ehframe import fde_ranges

PROGRAM = Path(__file__).resolve().parents[2] / "bench" / "programs" / "small.c"


def readelf_fde_ranges(path: Path) -> list[tuple[int, int]]:
    """(start, size) of every FDE as `readelf --debug-dump=frames` prints it."""
    argv = ["readelf", "--debug-dump=frames", str(path)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    ranges = []
    for match in re.finditer(r" FDE cie=\w+ pc=([0-9a-f]+)\.\.([0-9a-f]+)", out.stdout):
        start, end = int(match.group(1), 16), int(match.group(2), 16)
        if end > start:
            ranges.append((start, end - start))
    return sorted(ranges)


@pytest.fixture(scope="module", params=[["-O2"], ["-O0", "-no-pie", "-fno-pie"], ["-O2", "-s"]])
def small_binary(request, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("ehframe") / "small"
    subprocess.run(["gcc", *request.param, "-o", str(output), str(PROGRAM)], check=True)
    return output


def test_fde_ranges_match_readelf(small_binary):
    code = load_code(small_binary)
    assert code.fde_error is None
    assert [(r.start, r.size) for r in code.fdes] == readelf_fde_ranges(small_binary)
    assert len(code.fdes) >= 10  # the program's own functions plus crt start-up code


def test_every_fde_range_is_file_backed_code(small_binary):
    code = load_code(small_binary)
    for fde in code.fdes:
        body = code.code(fde.start, fde.size)
        assert body is not None and len(body) == fde.size


def test_a_truncated_section_yields_only_the_whole_records_before_the_cut(small_binary):
    # The builder's parser is lenient (it stops at a record that runs past the end); the bench's
    # former parser raised instead, and that assertion went with it.
    import lief

    section = lief.ELF.parse(str(small_binary)).get_section(".eh_frame")
    data = bytes(section.content)
    whole = fde_ranges(data, section.virtual_address)
    cut = fde_ranges(data[: len(data) // 2 + 3], section.virtual_address)
    assert 0 < len(cut) < len(whole)
    assert set(cut) <= set(whole)
