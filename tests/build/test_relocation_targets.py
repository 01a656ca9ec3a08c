"""Executable check of the emitted relocations without the loader (see relocation_check.py)."""

from __future__ import annotations

import pytest
from build_support import PROGRAMS, run_hpkg
from relocation_check import ElfFacts, check_package

CASES = [
    ("03-string-literal", "ready"),
    ("04-new-helper", "ready"),
    ("08-jump-table", "ready"),
    ("10-static-counter", "ready"),
    ("11-new-global", "ready"),
    ("17-cpp-virtual", "ready"),
    ("19-cold-split", "ready"),
    ("08-jump-table", "stripped"),
    ("14-threaded-server", "stripped"),
    ("11-new-global", "stripped"),
    ("15-ipa-ra-main-loop", "plain"),
]


@pytest.mark.parametrize(("name", "flavour"), CASES)
def test_every_relocated_reference_designates_what_the_fix_refers_to(name, flavour, samples, tmp_path):
    from hpkg.builder.diff import diff_files
    from hpkg.formats import read_package

    sample = samples[name]
    old, new = sample.binary("baseline", flavour), sample.binary("fixed", flavour)
    # Stripped: the distribution's debug symbols (the unstripped twins) tell variables apart.
    debug = () if flavour == "ready" else (
        "--old-debug", sample.symbols_twin("baseline", flavour),
        "--new-debug", sample.symbols_twin("fixed", flavour),
    )
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", *debug)
    assert result.code == 0, result.err
    package = read_package((tmp_path / "p.hpkg").read_bytes()).package
    old_facts = ElfFacts.read(old, sample.symbols_twin("baseline", flavour))
    new_facts = ElfFacts.read(new, sample.symbols_twin("fixed", flavour))
    diff = diff_files(old, new, *(debug[1::2] if debug else ()))
    checked = check_package(package, diff, old_facts, new_facts)
    in_code = sum(1 for r in package.relocations if r.section.name == "CODE")
    assert checked >= in_code > 0


@pytest.mark.parametrize("pie", [True, False], ids=["pie", "non-pie"])
def test_switch_table_relocations_in_pie_and_non_pie_builds(pie, compiler, tmp_path):
    """Non-PIC code names its table with an absolute 32-bit address and holds 8-byte case addresses."""
    from hpkg.builder.diff import diff_files
    from hpkg.formats import read_package

    extra = () if pie else ("-fno-pie", "-no-pie")
    old, new = compiler.pair("switch_table", (PROGRAMS / "switch_table.c").read_text(), extra)
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert result.code == 0, result.err
    package = read_package((tmp_path / "p.hpkg").read_bytes()).package
    table_entries = {(r.kind.name, r.space.name) for r in package.relocations if r.section.name == "RODATA"}
    assert table_entries == ({("R_X86_64_PC32", "CODE")} if pie else {("R_X86_64_64", "CODE")})
    if not pie:
        kinds = {r.kind.name for r in package.relocations if r.section.name == "CODE"}
        assert {"R_X86_64_32S", "R_X86_64_32"} <= kinds
    checked = check_package(package, diff_files(old, new), ElfFacts.read(old), ElfFacts.read(new))
    assert checked > 8


def test_a_wrong_relocation_is_caught(samples, tmp_path):
    """The check itself can fail: move one BASELINE target by 8 bytes and it must notice."""
    import dataclasses

    from hpkg.builder.diff import diff_files
    from hpkg.formats import read_package

    sample = samples["10-static-counter"]
    old, new = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    assert run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg").code == 0
    package = read_package((tmp_path / "p.hpkg").read_bytes()).package
    victim = next(i for i, r in enumerate(package.relocations) if r.space.name == "BASELINE")
    relocations = list(package.relocations)
    relocations[victim] = dataclasses.replace(relocations[victim], target=relocations[victim].target + 8)
    broken = dataclasses.replace(package, relocations=tuple(relocations))
    with pytest.raises(AssertionError):
        check_package(broken, diff_files(old, new), ElfFacts.read(old), ElfFacts.read(new))
