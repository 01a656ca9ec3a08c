"""Executable check of the emitted relocations without the loader (see relocation_check.py)."""

from __future__ import annotations

import re
import subprocess

import pytest
from build_support import PROGRAMS, run_hpkg
from relocation_check import ElfFacts, Relocated, check_package

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


def _relocation_offsets(path) -> list[int]:
    """Where every relocation of a linked file (static ones kept by --emit-relocs included) applies."""
    listing = subprocess.run(["readelf", "-rW", str(path)], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0], 16) for line in listing.splitlines() if re.match(r"[0-9a-f]{16} ", line)]


def _lea_targets(path, function: str) -> list[str]:
    """The functions `function`'s rip-relative `lea`s name, in order, as objdump reads them."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", f"--disassemble={function}", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    return re.findall(r"\blea\s+-?0x[0-9a-f]+\(%rip\),%\w+\s+# [0-9a-f]+ <([^>+]+)>", listing)


def test_relocation_free_local_function_addresses_are_relocated(compiler, tmp_path):
    """`lea rax, [rip + static_fn]` in one section gets no static relocation even with --emit-relocs;
    placed and relocated, the package's copy must still name the same functions as the fix does."""
    import capstone

    from hpkg.formats import read_package

    old, new = compiler.pair("local_function_pointer", (PROGRAMS / "local_function_pointer.c").read_text())
    expected = _lea_targets(new, "choose")
    assert sorted(expected) == ["handle_large", "handle_negative", "handle_small"]
    start, size, _ = next(f for f in ElfFacts.read(new).functions if f[2] == "choose")
    assert not any(start <= r < start + size for r in _relocation_offsets(new)), "must be relocation-free"

    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert result.code == 0, result.err
    package = read_package((tmp_path / "p.hpkg").read_bytes()).package
    old_facts = ElfFacts.read(old)
    placed = Relocated(package, old_facts)
    added = {placed.at.code + f.code_offset: f.name for f in package.added_functions}
    replaced = next(f for f in package.functions if f.name == "choose")
    offset = replaced.code_offset
    code = bytes(placed.sections["CODE"][offset : offset + replaced.code_size])
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    named = []
    for address, size, mnemonic, operands in decoder.disasm_lite(code, placed.at.code + offset):
        m = re.search(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]", operands)
        if mnemonic == "lea" and m:
            target = address + size + int(m.group(2), 0) * (-1 if m.group(1) == "-" else 1)
            named.append(added[target] if target in added else old_facts.describe(target)[1])
    assert named == expected


def test_an_operand_the_reference_finder_missed_refuses_the_build(compiler):
    """The builder never decodes references itself: a rip-relative operand the finder did not report
    (here removed from its output, a fake reference source) is a refusal naming the instruction."""
    import dataclasses

    from hpkg.builder.diff import diff_files
    from hpkg.builder.plan import plan_patch

    old, new = compiler.pair("local_function_pointer", (PROGRAMS / "local_function_pointer.c").read_text())
    diff = diff_files(old, new)
    assert not [r for r in plan_patch(diff).verdict.reasons if r.code == "reference-unresolved"]
    pair = diff.pair("choose")
    kept = tuple(r for r in pair.new.references if not r.target.name.startswith("handle_"))
    assert len(kept) < len(pair.new.references)
    blind = dataclasses.replace(pair, new=pair.new.with_references(kept))
    diff = dataclasses.replace(diff, pairs=tuple(blind if p is pair else p for p in diff.pairs))
    messages = [r.message for r in plan_patch(diff).verdict.reasons if r.code == "reference-unresolved"]
    assert len(messages) == 3, messages
    for message in messages:
        assert message.startswith("function 'choose' at +0x") and "no reference covers (lea " in message
