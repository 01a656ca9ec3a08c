"""Format 1.1's optional unwind section: written only when present, read back exactly, and refused by a
1.0 reader rather than ignored. The content is real: `hpkg build` on a C++ pair compiled by g++."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path

import pytest
from package_crafting import assemble, split

from hpkg.builder.build import build_package
from hpkg.errors import PackageError, VerifyError
from hpkg.formats import (
    Package,
    PackageSection,
    Relocation,
    RelocationKind,
    TargetSpace,
    read_package,
    write_package,
)
from hpkg.formats.header import DIGEST_MINOR

SOURCE = """
#include <stdexcept>
#include <string>
#include <cstdio>
int checked(const std::string& text) {
    int value = std::stoi(text);
#ifdef FIX
    if (value > 4096) throw std::length_error("over the limit");
#endif
    return value;
}
int main(int argc, char** argv) {
    try { std::printf("%d\\n", checked(argc > 1 ? argv[1] : "1")); }
    catch (const std::exception& e) { std::printf("error: %s\\n", e.what()); }
    return 0;
}
"""


@pytest.fixture(scope="module")
def cxx_package(tmp_path_factory: pytest.TempPathFactory) -> Package:
    out = tmp_path_factory.mktemp("cxx")
    (out / "prog.cpp").write_text(SOURCE)
    for build, defines in (("baseline", []), ("fixed", ["-DFIX"])):
        subprocess.run(
            ["g++", "-O2", "-g", "-fPIE", "-pie", "-Wl,--emit-relocs", "-Wl,--build-id", *defines, "prog.cpp",
             "-o", build],
            check=True, cwd=out, capture_output=True,
        )
    return build_package(Path(out / "baseline"), Path(out / "fixed")).package


def test_a_package_with_unwind_rules_is_1_1_and_reads_back_equal(cxx_package: Package, signing_key) -> None:
    assert cxx_package.unwind
    blob = write_package(cxx_package, signing_key)
    loaded = read_package(blob, signing_key.public_key())
    assert loaded.package == cxx_package
    assert loaded.format_version == (1, 1)
    # Unsigned, it is 1.3 (the package digest), with the same unwind section.
    assert read_package(write_package(cxx_package)).format_version == (1, DIGEST_MINOR)
    assert loaded.section_digests["unwind"] == hashlib.sha256(cxx_package.unwind).digest()
    kinds = {(r.kind, r.space) for r in cxx_package.relocations if r.section is PackageSection.UNWIND}
    assert (RelocationKind.R_X86_64_PC32, TargetSpace.CODE) in kinds  # pc_begin of each FDE


def test_a_package_without_unwind_rules_stays_1_0(cxx_package: Package, signing_key) -> None:
    bare = dataclasses.replace(
        cxx_package,
        unwind=b"",
        relocations=tuple(r for r in cxx_package.relocations if r.section is not PackageSection.UNWIND),
    )
    loaded = read_package(write_package(bare, signing_key))
    assert loaded.format_version == (1, 0)
    assert "unwind" not in loaded.section_digests
    unsigned = read_package(write_package(bare))
    assert unsigned.format_version == (1, DIGEST_MINOR) and unsigned.package == bare


def test_a_1_0_reader_refuses_a_package_with_unwind_rules(cxx_package: Package) -> None:
    """What a 1.0 reader does: it ignores `sections.unwind` of a newer minor, and then the sections it
    knows do not add up to the payload — refused, never applied without the rules."""
    fields, document, frame, _ = split(write_package(cxx_package))
    fields[2], fields[4] = 0, bytes(8)  # 1.0: no package digest in the key id field
    del document["sections"]["unwind"]
    with pytest.raises(PackageError, match="sections add up to"):
        read_package(assemble(fields, document, frame))
    # And a 1.0 manifest naming an unwind section is refused by this reader (an unknown key for 1.0).
    fields, document, frame, _ = split(write_package(cxx_package))
    fields[2], fields[4] = 0, bytes(8)
    with pytest.raises(PackageError, match="unknown field 'unwind'"):
        read_package(assemble(fields, document, frame))


def test_unwind_relocations_are_bounded_by_the_section(cxx_package: Package) -> None:
    size = len(cxx_package.unwind)
    pc32 = RelocationKind.R_X86_64_PC32
    outside = Relocation(PackageSection.UNWIND, size - 2, pc32, TargetSpace.CODE, 0, 0)
    with pytest.raises(PackageError, match="lie outside a section"):
        write_package(dataclasses.replace(cxx_package, relocations=(*cxx_package.relocations, outside)))
    beyond = Relocation(PackageSection.CODE, 0, pc32, TargetSpace.UNWIND, size + 1, 0)
    with pytest.raises(PackageError, match="offset in unwind"):
        write_package(dataclasses.replace(cxx_package, relocations=(beyond,)))


def test_an_altered_unwind_section_fails_its_digest(cxx_package: Package) -> None:
    fields, document, frame, _ = split(write_package(cxx_package))
    document["sections"]["unwind"]["sha256"] = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(VerifyError, match="section unwind does not match its digest"):
        read_package(assemble(fields, document, frame))
