"""C++ exceptions through package code in a file patched with `hpkg apply --file` (samples/17-cpp-virtual).

The package carries its functions' FDEs and LSDAs (format 1.1 unwind section); the patched file gets
a new .eh_frame_hdr, pointed at by PT_GNU_EH_FRAME, whose sorted table covers the baseline's FDEs
and the package's. Without them, the same patch ends in std::terminate: the control below.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

from apply_file_helpers import READY_FLAGS, Keys, Packages, run_hpkg
from sample_corpus import load_samples

from hpkg.elf.constants import PT_GNU_EH_FRAME
from hpkg.elf.ehframe import read_eh_frame_hdr
from hpkg.elf.file import ElfFile
from hpkg.elf.structs import PHDR
from hpkg.formats import PackageSection, read_package, write_package

SAMPLE = "17-cpp-virtual"
PROCESS = "_ZN6Upload7processERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"


def _sample():
    return next(s for s in load_samples() if s.name == SAMPLE)


def _search_table(path: Path):
    elf = ElfFile(path)
    [header] = [p for p in elf.program_headers if p.type == PT_GNU_EH_FRAME]
    return header, read_eh_frame_hdr(elf.read(header.vaddr, header.filesz), header.vaddr)


def _run(binary: Path, request: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary)], input=f"{request}\n", capture_output=True, text=True, timeout=30)


def test_the_search_table_covers_baseline_and_package_fdes(
    packages: Packages, keys: Keys, tmp_path: Path
) -> None:
    sample = _sample()
    baseline = sample.binary("baseline", "ready")
    patched = tmp_path / "patched"
    result = run_hpkg(
        "apply", packages.build(sample, "ready"), "--file", baseline, "-o", patched, "--key", keys.public,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)

    old_header, old = _search_table(baseline)
    new_header, new = _search_table(patched)
    assert new_header.vaddr != old_header.vaddr  # a new header, in a segment of its own
    assert any(p.type == 1 and p.vaddr == new_header.vaddr for p in ElfFile(patched).program_headers)
    assert new.eh_frame == old.eh_frame
    assert set(old.table) < set(new.table)
    locations = [location for location, _ in new.table]
    assert locations == sorted(locations)
    added = {location for location, _ in set(new.table) - set(old.table)}
    replacements = {s["function"]: s["replacement"] for s in document["patch_sites"]}
    assert {replacements[PROCESS], replacements[PROCESS + ".cold"]} <= added
    code = document["areas"]["code"]
    assert all(code["address"] <= a < code["address"] + code["size"] for a in added)
    readelf = subprocess.run(["readelf", "-W", "-S", str(patched)], capture_output=True, text=True)
    assert readelf.returncode == 0 and readelf.stderr == ""
    assert ".hpkg.eh_frame" in readelf.stdout


def test_exceptions_pass_through_package_code_and_terminate_without_its_rules(
    packages: Packages, keys: Keys, tmp_path: Path
) -> None:
    """With the unwind section: both exception paths answer the fixed way. The same package without it
    (the control) aborts in std::terminate on the first exception through the replaced method."""
    sample = _sample()
    baseline = sample.binary("baseline", "ready")
    package_path = packages.build(sample, "ready")
    package = read_package(package_path.read_bytes()).package
    assert package.unwind and any(r.section is PackageSection.UNWIND for r in package.relocations)

    patched = tmp_path / "patched"
    applied = run_hpkg("apply", package_path, "--file", baseline, "-o", patched, "--key", keys.public)
    assert applied.returncode == 0, applied.stderr
    thrown_through = _run(patched, "upload abc")  # std::invalid_argument from parse_size, through process
    assert (thrown_through.returncode, thrown_through.stdout) == (0, "error: not a size: 'abc'\n")
    thrown_inside = _run(patched, "upload 5000")  # std::length_error thrown by the replacement itself
    assert (thrown_inside.returncode, thrown_inside.stdout) == (
        0, "error: upload of 5000 bytes is over the limit\n"
    )
    stripped = tmp_path / "patched.stripped"  # strip keeps the new header and what it points at
    subprocess.run(["strip", "-o", str(stripped), str(patched)], capture_output=True, check=True)
    assert _run(stripped, "upload abc").stdout == "error: not a size: 'abc'\n"

    bare = dataclasses.replace(
        package,
        unwind=b"",
        relocations=tuple(r for r in package.relocations if r.section is not PackageSection.UNWIND),
    )
    bare_path = tmp_path / "bare.hpkg"
    bare_path.write_bytes(write_package(bare))
    control = tmp_path / "control"
    applied = run_hpkg("apply", bare_path, "--file", baseline, "-o", control, "--allow-unsigned")
    assert applied.returncode == 0, applied.stderr
    aborted = _run(control, "upload abc")
    assert aborted.returncode == -6  # SIGABRT
    assert "terminate called after throwing an instance of 'std::invalid_argument'" in aborted.stderr


def test_a_baseline_without_a_search_table_is_refused(packages: Packages, keys: Keys, tmp_path: Path) -> None:
    """Without PT_GNU_EH_FRAME (turned into PT_NULL here) the unwinder has no table to extend: refused,
    nothing written."""
    sample = _sample()
    baseline = sample.binary("baseline", "ready")
    elf = ElfFile(baseline)
    [index] = [i for i, p in enumerate(elf.program_headers) if p.type == PT_GNU_EH_FRAME]
    damaged = bytearray(baseline.read_bytes())
    p_type = elf.header.phoff + index * PHDR.size
    damaged[p_type : p_type + 4] = bytes(4)  # p_type = PT_NULL
    copy = tmp_path / "baseline"
    copy.write_bytes(bytes(damaged))
    out = tmp_path / "patched"
    package = packages.build(sample, "ready")
    refused = run_hpkg("apply", package, "--file", copy, "-o", out, "--key", keys.public)
    assert refused.returncode == 4
    assert refused.stderr.startswith("error: unwind-registration-unsupported:")
    assert "0 PT_GNU_EH_FRAME headers" in refused.stderr
    assert not out.exists()


def test_a_patched_cxx_shared_library_unwinds_through_its_package(tmp_path: Path) -> None:
    """The same for a library: ld.so's sorted object table spans every PT_LOAD, the added ones too."""
    programs = Path(__file__).parent / "programs"
    libraries = {}
    for build, defines in (("baseline", []), ("fixed", ["-DFIX"]), ("patched", None)):
        (tmp_path / build).mkdir()
        libraries[build] = tmp_path / build / "libsizes.so"
        if defines is not None:
            subprocess.run(
                ["g++", *READY_FLAGS, "-fPIC", "-shared", "-Wl,-soname,libsizes.so", *defines, "-o",
                 str(libraries[build]), str(programs / "sizes_lib.cpp")],
                check=True, capture_output=True,
            )
    host = tmp_path / "host"
    subprocess.run(
        ["g++", *READY_FLAGS, "-o", str(host), str(programs / "sizes_host.cpp"), str(libraries["baseline"])],
        check=True, capture_output=True,
    )
    package = tmp_path / "sizes.hpkg"
    assert run_hpkg("build", libraries["baseline"], libraries["fixed"], "-o", package).returncode == 0
    applied = run_hpkg(
        "apply", package, "--file", libraries["baseline"], "-o", libraries["patched"], "--allow-unsigned"
    )
    assert applied.returncode == 0, applied.stderr

    def answers(directory: Path) -> list[str]:
        run = subprocess.run(
            [str(host)], input="5000\nabc\n12\n", capture_output=True, text=True, timeout=30,
            env={"LD_LIBRARY_PATH": str(directory)},
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.splitlines()

    assert answers(libraries["baseline"].parent) == ["size 5000", "error: stoi", "size 12"]
    assert answers(libraries["patched"].parent) == ["error: over the limit", "error: stoi", "size 12"]
