"""Format 1.4 (a PE32+ baseline) next to the packages hpkg wrote before it: packages written by the
1.3 writer (the code before this change, files in tests/formats/data/) still read, unchanged; a
PE32+ record round-trips, and its fields are checked: an image base only for pe32+, 64 KiB-aligned.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpkg.errors import PackageError
from hpkg.formats import read_package, write_package
from hpkg.formats.header import PE_MINOR
from hpkg.formats.model import PE_FILE_FORMAT
from hpkg.formats.signing import load_public_key

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize(
    ("name", "version", "signed"),
    [("elf-1.3-unsigned-by-1.3-writer", (1, 3), False), ("elf-1.0-signed-by-1.3-writer", (1, 0), True)],
)
def test_a_package_of_the_previous_writer_still_reads_and_writes_back_the_same(name, version, signed) -> None:
    blob = (DATA / f"{name}.hpkg").read_bytes()
    key = load_public_key(DATA / f"{name}.pub") if signed else None
    loaded = read_package(blob, key)
    assert loaded.format_version == version and loaded.signed is signed
    assert loaded.package.target.file_format == "elf64" and loaded.package.target.image_base is None
    if not signed:  # the same record is written as the same bytes: ELF packages did not change
        assert write_package(loaded.package) == blob


def test_a_pe_target_is_written_as_1_4_and_read_back(tmp_path) -> None:
    elf = read_package((DATA / "elf-1.3-unsigned-by-1.3-writer.hpkg").read_bytes()).package
    target = dataclasses.replace(elf.target, file_format=PE_FILE_FORMAT, image_base=0x140000000)
    pe = dataclasses.replace(elf, target=target)
    loaded = read_package(write_package(pe))
    assert loaded.format_version == (1, PE_MINOR)
    assert loaded.package == pe


@pytest.mark.parametrize(
    ("file_format", "image_base", "message"),
    [
        (PE_FILE_FORMAT, None, "needs image base"),
        ("elf64", 0x140000000, "has no image base"),
        (PE_FILE_FORMAT, 0x140001000, "not a multiple of 64 KiB"),
    ],
)
def test_an_image_base_belongs_to_a_pe_target_alone(file_format, image_base, message) -> None:
    elf = read_package((DATA / "elf-1.3-unsigned-by-1.3-writer.hpkg").read_bytes()).package
    target = dataclasses.replace(elf.target, file_format=file_format, image_base=image_base)
    with pytest.raises(PackageError, match=message):
        write_package(dataclasses.replace(elf, target=target))
