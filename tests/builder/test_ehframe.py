"""The .eh_frame readers (LEB128 numbers, DW_EH_PE pointers, CIE/FDE records) agree with binutils.

A small C++ program that throws gives every kind of record GCC writes: "zR" CIEs for plain
functions, a "zPLR" CIE (personality routine through an indirect slot, LSDA pointers) for the
functions with landing pads. Each value the readers produce is compared with `readelf -wf`.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpkg.elf.ehframe import (
    DW_EH_PE_INDIRECT,
    DW_EH_PE_PCREL_SDATA4,
    parse_eh_frame,
    parse_eh_frame_records,
    read_encoded_pointer,
    read_sleb128,
    read_uleb128,
)

THROWER = r"""
#include <cstdio>
#include <stdexcept>
static int __attribute__((noinline)) check(int x)
{
    if (x < 0)
        throw std::runtime_error("negative");
    return x * 2;
}
int main(int argc, char **)
{
    try {
        std::printf("%d\n", check(argc - 2));
    } catch (const std::exception &e) {
        std::puts(e.what());
    }
    return 0;
}
"""


@dataclass(frozen=True)
class EhFrame:
    """An .eh_frame section's bytes and link address, and what `readelf -wf` says about it."""

    data: bytes
    address: int
    listing: str


@pytest.fixture(scope="module")
def eh_frame(tmp_path_factory: pytest.TempPathFactory) -> EhFrame:
    directory: Path = tmp_path_factory.mktemp("ehframe")
    (directory / "thrower.cpp").write_text(THROWER)
    binary = directory / "thrower"
    subprocess.run(["g++", "-O2", "thrower.cpp", "-o", str(binary)], check=True, cwd=directory)
    dump = directory / "eh_frame.bin"
    subprocess.run(["objcopy", "--dump-section", f".eh_frame={dump}", str(binary)], check=True)
    sections = subprocess.run(["readelf", "-SW", str(binary)], capture_output=True, text=True, check=True)
    address = int(re.search(r"\s\.eh_frame\s+PROGBITS\s+([0-9a-f]+)", sections.stdout).group(1), 16)
    listing = subprocess.run(["readelf", "-wf", str(binary)], capture_output=True, text=True, check=True)
    return EhFrame(dump.read_bytes(), address, listing.stdout)


def _records(listing: str) -> list[tuple[int, str, str]]:
    """(section offset, "CIE"/"FDE", the record's text) for every record readelf lists."""
    heads = list(re.finditer(r"^([0-9a-f]{8}) [0-9a-f]+ [0-9a-f]+ (CIE|FDE)", listing, re.M))
    ends = [m.start() for m in heads[1:]] + [len(listing)]
    pairs = zip(heads, ends, strict=True)
    return [(int(m.group(1), 16), m.group(2), listing[m.start() : end]) for m, end in pairs]


def test_fde_ranges_match_readelf(eh_frame):
    expected = [
        (int(start, 16), int(end, 16) - int(start, 16))
        for start, end in re.findall(r"FDE cie=[0-9a-f]+ pc=([0-9a-f]+)\.\.([0-9a-f]+)", eh_frame.listing)
    ]
    assert len(expected) >= 3
    assert list(parse_eh_frame(eh_frame.data, eh_frame.address)) == expected


def test_leb128_alignment_factors_match_readelf(eh_frame):
    """A CIE's code alignment factor is ULEB128 and its data alignment factor SLEB128 (-8: negative)."""
    cies = [(offset, text) for offset, kind, text in _records(eh_frame.listing) if kind == "CIE"]
    assert cies
    for offset, text in cies:
        augmentation_end = eh_frame.data.index(b"\0", offset + 9)  # after length, CIE id and version
        code_factor, pos = read_uleb128(eh_frame.data, augmentation_end + 1)
        data_factor, _ = read_sleb128(eh_frame.data, pos)
        assert code_factor == int(re.search(r"Code alignment factor: (-?\d+)", text).group(1))
        assert data_factor == int(re.search(r"Data alignment factor: (-?\d+)", text).group(1)) == -8


def test_personality_and_lsda_pointers_match_readelf(eh_frame):
    """The zPLR CIE's personality pointer (indirect pcrel sdata4) and each FDE's LSDA pointer."""
    cies, fdes = parse_eh_frame_records(eh_frame.data, eh_frame.address)
    listed = {offset: text for offset, _, text in _records(eh_frame.listing)}
    personal = [c for c in cies.values() if c.augmentation == "zPLR"]
    assert len(personal) == 1
    cie = personal[0]
    assert cie.personality_encoding == DW_EH_PE_INDIRECT | DW_EH_PE_PCREL_SDATA4
    assert cie.lsda_encoding == DW_EH_PE_PCREL_SDATA4
    # readelf prints the augmentation data raw: encoding byte, then the 4-byte pc-relative pointer.
    raw = bytes.fromhex(re.search(r"Augmentation data:\s+([0-9a-f ]+)", listed[cie.offset]).group(1))
    field = eh_frame.address + cie.personality_field
    encoding = cie.personality_encoding
    slot, _ = read_encoded_pointer(eh_frame.data, cie.personality_field, encoding, eh_frame.address)
    assert raw[0] == cie.personality_encoding
    assert slot == field + int.from_bytes(raw[1:5], "little", signed=True)
    with_lsda = [f for f in fdes if f.cie is cie]
    assert with_lsda
    for fde in with_lsda:
        data = bytes.fromhex(re.search(r"Augmentation data:\s+([0-9a-f ]+)", listed[fde.offset]).group(1))
        assert fde.lsda == eh_frame.address + fde.lsda_field + int.from_bytes(data, "little", signed=True)
