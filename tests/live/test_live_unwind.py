"""Live C++ exceptions through package code (samples/17-cpp-virtual): ld.so's record of the main
program points at the package's merged search table while applied and holds its startup words again
after revert; a package with unwind rules for a shared library is refused before anything changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from live_helpers import assert_running_untraced, hpkg, hpkg_mappings

from hpkg.elf.ehframe import read_eh_frame_hdr
from hpkg.loader.live_unwind import find_unwind_target
from hpkg.loader.process import Process

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import Conversation  # noqa: E402

PROGRAMS = Path(__file__).parent / "programs"
# The C++ library pair is shared with the --file tests: one source, two ways to apply its fix.
CXX_LIBRARY = Path(__file__).parent.parent / "apply_file" / "programs"
READY_FLAGS = ("-O2", "-g", "-fno-omit-frame-pointer", "-flive-patching=inline-clone", "-Wl,--emit-relocs",
               "-Wl,--build-id=sha1")
PROCESS = "_ZN6Upload7processERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"


def _words(process: Process, record: int) -> tuple[int, int]:
    """(map_end, eh_frame) of ld.so's _dlfo_main record."""
    blob = process.read(record + 8, 24)
    return int.from_bytes(blob[:8], "little"), int.from_bytes(blob[16:], "little")


def test_the_unwinder_finds_package_fdes_while_applied_and_the_startup_table_after_revert(
    samples, keys, build_package
) -> None:
    sample = samples["17-cpp-virtual"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    with Conversation(sample, "baseline", "ready") as talk:
        assert talk.ask("upload 100") == "stored 100 bytes, 100 in total"
        process = Process(talk.pid)
        [image] = [i for i in process.images() if i.path == str(sample.binary("baseline", "ready"))]
        startup = find_unwind_target(process, image)
        assert _words(process, startup.record_address) == (startup.original_end, startup.original_eh_frame)

        applied = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public, "--json")
        assert applied.returncode == 0, applied.stderr
        [memory] = [a["allocation"] for a in applied.json()["images"]]
        map_end, eh_frame = _words(process, startup.record_address)
        assert memory["start"] >= image.end  # above the program, so that its range can cover it
        assert map_end == memory["start"] + memory["size"]
        assert memory["start"] <= eh_frame < map_end
        count = int.from_bytes(process.read(eh_frame + 8, 4), "little")
        table = read_eh_frame_hdr(process.read(eh_frame, 12 + 8 * count), eh_frame)
        assert set(startup.baseline.table) < set(table.table)
        replacements = {s["function"]: s["replacement"] for s in applied.json()["images"][0]["patch_sites"]}
        locations = {location for location, _ in table.table}
        assert {replacements[PROCESS], replacements[PROCESS + ".cold"]} <= locations

        assert talk.ask("upload abc") == "error: not a size: 'abc'"  # thrown through the replacement
        assert talk.ask("upload 5000") == "error: upload of 5000 bytes is over the limit"  # thrown inside it
        assert_running_untraced(talk.pid)

        reverted = hpkg("revert", "--pid", talk.pid)
        assert reverted.returncode == 0, reverted.stderr
        assert _words(process, startup.record_address) == (startup.original_end, startup.original_eh_frame)
        assert hpkg_mappings(talk.pid) == []
        assert talk.ask("upload abc") == "error: not a size: 'abc'"
        assert talk.ask("upload 5000") == "stored 5000 bytes, 5100 in total"
        assert_running_untraced(talk.pid)


def test_unwind_rules_for_a_shared_library_are_refused_live(tmp_path, keys) -> None:
    builds = {}
    for build, defines in (("baseline", ()), ("fixed", ("-DFIX",))):
        (tmp_path / build).mkdir()
        builds[build] = tmp_path / build / "libsizes.so"
        subprocess.run(
            ["g++", *READY_FLAGS, "-fPIC", "-shared", "-Wl,-soname,libsizes.so", *defines, "-o",
             str(builds[build]), str(CXX_LIBRARY / "sizes_lib.cpp")],
            check=True, capture_output=True,
        )
    host = tmp_path / "host"
    subprocess.run(
        ["g++", *READY_FLAGS, "-o", str(host), str(CXX_LIBRARY / "sizes_host.cpp"), str(builds["baseline"]),
         f"-Wl,-rpath,{builds['baseline'].parent}"],
        check=True, capture_output=True,
    )
    package = tmp_path / "sizes.hpkg"
    built = hpkg("build", builds["baseline"], builds["fixed"], "-o", package, "--key", keys.private)
    assert built.returncode == 0, built.stderr

    with subprocess.Popen([str(host)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as running:
        assert running.stdin is not None and running.stdout is not None
        try:
            # An answer first: the library is mapped (Popen returns before the kernel maps the image).
            running.stdin.write("5000\n")
            running.stdin.flush()
            assert running.stdout.readline().strip() == "size 5000"
            refused = hpkg("apply", package, "--pid", running.pid, "--key", keys.public)
            assert refused.returncode == 4
            assert refused.stderr.startswith("error: unwind-registration-unsupported:")
            assert "is a shared library" in refused.stderr
            assert hpkg_mappings(running.pid) == []
            assert_running_untraced(running.pid)
            for request, answer in (("5000", "size 5000"), ("abc", "error: stoi")):
                running.stdin.write(request + "\n")
                running.stdin.flush()
                assert running.stdout.readline().strip() == answer
        finally:
            running.stdin.close()


def test_a_superseding_level_takes_over_the_registration(samples, keys, build_package) -> None:
    """Level 2 (same fix) supersedes level 1: ld.so's record moves to level 2's table as level 1's
    memory is freed, exceptions keep passing through, and revert restores the startup words."""
    from hpkg.formats import read_package

    sample = samples["17-cpp-virtual"]
    old, new = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    first = build_package(old, new)
    first_id = read_package(first.read_bytes()).package.identity.package_id
    second = build_package(old, new, "--level", "2", "--supersedes", first_id)
    with Conversation(sample, "baseline", "ready") as talk:
        assert talk.ask("upload 100") == "stored 100 bytes, 100 in total"  # started: ld.so is done
        process = Process(talk.pid)
        [image] = [i for i in process.images() if i.path == str(old)]
        startup = find_unwind_target(process, image)
        for package in (first, second):
            applied = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public, "--json")
            assert applied.returncode == 0, applied.stderr
            [memory] = [a["allocation"] for a in applied.json()["images"]]
            map_end, eh_frame = _words(process, startup.record_address)
            assert map_end == memory["start"] + memory["size"]
            assert memory["start"] <= eh_frame < map_end
            assert talk.ask("upload abc") == "error: not a size: 'abc'"
            assert talk.ask("upload 5000") == "error: upload of 5000 bytes is over the limit"
        assert len({line.split()[-2] for line in hpkg_mappings(talk.pid)}) == 1  # level 1's memory freed
        reverted = hpkg("revert", "--pid", talk.pid)
        assert reverted.returncode == 0, reverted.stderr
        assert _words(process, startup.record_address) == (startup.original_end, startup.original_eh_frame)
        assert talk.ask("upload abc") == "error: not a size: 'abc'"
        assert_running_untraced(talk.pid)
