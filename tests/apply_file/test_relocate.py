"""relocate() through real packages: every reference of the relocated code names what the fix's code named.

The packages come from `hpkg build` on the samples. Each relocated function is disassembled with
Capstone beside the same function in the fixed build, instruction by instruction; each branch and
rip-relative operand is resolved independently of hpkg (symbols and PLT slots read with LIEF), and
must reach the baseline's symbol of the same name (plus the load bias), the package's own copy of a
replaced or added function, or bytes equal to the fix's (string literals).
"""

from __future__ import annotations

import struct
from pathlib import Path

import capstone
import lief
import pytest
from apply_file_helpers import Keys, Packages
from capstone import x86
from sample_corpus import load_samples

from hpkg.arch.x86_64 import decode_abs_jmp, decode_jmp_rel32
from hpkg.errors import RefusedError
from hpkg.formats import ImportRecord, Package, PackageSection, TargetSpace, read_package, read_package_file
from hpkg.loader.link import RelocatedImage, relocate
from hpkg.loader.placement import Placement, ResolvedImport, area_layout

BY_NAME = {s.name: s for s in load_samples()}
BIAS = 0x5555_5540_0000  # a PIE load bias as the kernel picks them
PACKAGE_GAP = 0x20_0000  # the package starts this far after the image (within ±2 GiB)
FAR_LIBRARY = 0x7F11_2233_4000  # where a shared library maps: far beyond ±2 GiB of the image


def _disassembler() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _references(md: capstone.Cs, code: bytes, address: int) -> list[tuple[int, str, int]]:
    """(offset in the function, mnemonic, target address) of each rel32 branch and rip-relative operand."""
    found = []
    for insn in md.disasm(code, address):
        for op in insn.operands:
            if op.type == x86.X86_OP_MEM and op.mem.base == x86.X86_REG_RIP:
                found.append((insn.address - address, insn.mnemonic, insn.address + insn.size + op.mem.disp))
            elif op.type == x86.X86_OP_IMM and (
                insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL)
            ):
                found.append((insn.address - address, insn.mnemonic, op.imm))
    return found


class Binary:
    """Symbols and PLT entries of one ELF file, read with LIEF (independent of hpkg)."""

    def __init__(self, path: Path) -> None:
        self.elf = lief.parse(str(path))
        self.symbols = {
            s.name: (s.value, s.size)
            for s in self.elf.symtab_symbols
            if s.name and s.value and s.type in (lief.ELF.Symbol.TYPE.FUNC, lief.ELF.Symbol.TYPE.OBJECT)
        }
        slots = {r.address: r.symbol.name for r in self.elf.pltgot_relocations if r.has_symbol}
        slots |= {r.address: r.symbol.name for r in self.elf.dynamic_relocations if r.has_symbol}
        self.plt: dict[int, str] = {}
        md = _disassembler()
        for section in self.elf.sections:
            if section.name in (".plt", ".plt.sec", ".plt.got"):
                for insn in md.disasm(bytes(section.content), section.virtual_address):
                    op = insn.operands[0] if insn.mnemonic == "jmp" else None
                    if op is not None and op.type == x86.X86_OP_MEM and op.mem.base == x86.X86_REG_RIP:
                        slot = insn.address + insn.size + op.mem.disp
                        entry = insn.address & ~0xF if section.name == ".plt" else insn.address
                        if slot in slots:
                            self.plt[entry] = slots[slot]

    def name_of(self, address: int) -> tuple[str, int] | None:
        """(symbol or "plt:NAME", offset into it) for an address, or None for anonymous data."""
        if address in self.plt:
            return f"plt:{self.plt[address]}", 0
        for name, (value, size) in self.symbols.items():
            if value <= address < value + max(size, 1):
                return name, address - value
        return None

    def address_of(self, name: str) -> int:
        if name.startswith("plt:"):
            return next(a for a, n in self.plt.items() if n == name[4:])
        return self.symbols[name][0]

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.elf.get_content_from_virtual_address(address, size))


def _package(packages: Packages, keys: Keys, name: str) -> Package:
    path = packages.build(BY_NAME[name], "ready")
    return read_package(read_package_file(path), keys.public).package


def _place(package: Package, base: int, resolve=None) -> RelocatedImage:  # noqa: ANN001
    resolve = resolve or (lambda record: pytest.fail(f"unexpected import {record.name}"))
    layout = area_layout(package, resolve)
    return relocate(package, Placement.contiguous(base, layout), BIAS, resolve)


def _package_base(package: Package) -> int:
    return BIAS + package.target.image_size + PACKAGE_GAP


@pytest.mark.parametrize(
    "name",
    [
        "02-changed-constant",
        "03-string-literal",
        "10-static-counter",
        "11-new-global",
        "18-two-functions",
        "19-cold-split",
    ],
)
def test_every_reference_reaches_what_the_fix_referred_to(packages: Packages, keys: Keys, name: str) -> None:
    sample = BY_NAME[name]
    package = _package(packages, keys, name)
    baseline, fix = Binary(sample.binary("baseline", "ready")), Binary(sample.binary("fixed", "ready"))
    far = {record.name: FAR_LIBRARY + 0x1000 * i for i, record in enumerate(package.imports)}
    relocated = _place(package, _package_base(package), lambda r: ResolvedImport(r.name, far[r.name]))
    placement = relocated.placement
    in_package = {f.name: f.code_offset for f in package.functions} | {
        f.name: f.code_offset for f in package.added_functions
    }
    md = _disassembler()
    checked = 0
    for f in (*package.functions, *package.added_functions):
        fix_start = fix.address_of(f.name)
        fix_refs = _references(md, fix.read(fix_start, f.code_size), fix_start)
        start = placement.code + f.code_offset
        ours = _references(md, relocated.code[f.code_offset : f.code_offset + f.code_size], start)
        assert [r[:2] for r in ours] == [r[:2] for r in fix_refs], f"{f.name}: instructions differ"
        for (offset, mnemonic, fix_target), (_, _, target) in zip(fix_refs, ours, strict=True):
            where = f"{f.name}+{offset:#x} {mnemonic}"
            if fix_start <= fix_target < fix_start + f.code_size:  # inside the function: moved with it
                assert target - start == fix_target - fix_start, where
                continue
            symbol, delta = fix.name_of(fix_target) or ("", 0)
            if symbol in in_package:  # another function of the package
                assert target == placement.code + in_package[symbol] + delta, where
            elif symbol.removeprefix("plt:") in far:  # an import the baseline lacks: direct or via a stub
                stub = relocated.code[target - placement.code :][:14]
                expected = far[symbol.removeprefix("plt:")]
                assert target == expected or decode_abs_jmp(stub) == expected, where
            elif symbol in baseline.symbols or symbol.startswith("plt:"):  # live state, unchanged code, PLT
                assert target == BIAS + baseline.address_of(symbol) + delta, where
            else:  # anonymous read-only data (a string literal): the same bytes, in package or baseline
                expected = fix.read(fix_target, 8)
                if placement.rodata <= target < placement.rodata + len(relocated.rodata):
                    actual = relocated.rodata[target - placement.rodata :][:8]
                else:
                    actual = baseline.read(target - BIAS, 8)
                assert actual == expected, where
            checked += 1
    assert checked > 0


def test_jump_table_entries_reach_the_same_cases(packages: Packages, keys: Keys) -> None:
    sample = BY_NAME["08-jump-table"]
    package = _package(packages, keys, sample.name)
    fix = Binary(sample.binary("fixed", "ready"))
    relocated = _place(package, _package_base(package))
    placement = relocated.placement
    entries = [
        r for r in package.relocations if r.section is PackageSection.RODATA and r.space is TargetSpace.CODE
    ]
    assert len(entries) >= 4, "the switch table was not copied"
    first_case = entries[0].target
    (function,) = [f for f in package.functions if f.code_offset <= first_case < f.code_offset + f.code_size]
    md = _disassembler()
    fix_start = fix.address_of(function.name)
    fix_code = fix.read(fix_start, function.code_size)
    fix_lea = [t for _, m, t in _references(md, fix_code, fix_start) if m == "lea"]
    start = placement.code + function.code_offset
    code = relocated.code[function.code_offset : function.code_offset + function.code_size]
    our_lea = [t for _, m, t in _references(md, code, start) if m == "lea"]
    tables = [(f, o) for f, o in zip(fix_lea, our_lea, strict=True) if placement.rodata <= o < placement.end]
    assert tables, "no lea of the table in the package rodata"
    fix_table, table = tables[0]
    for i in range(len(entries)):
        (fix_entry,) = struct.unpack_from("<i", fix.read(fix_table + 4 * i, 4))
        (entry,) = struct.unpack_from("<i", relocated.rodata, table - placement.rodata + 4 * i)
        assert table + entry - start == fix_table + fix_entry - fix_start, f"case {i}"


def test_patch_site_jumps_reach_the_replacements(packages: Packages, keys: Keys) -> None:
    package = _package(packages, keys, "18-two-functions")
    baseline = Binary(BY_NAME["18-two-functions"].binary("baseline", "ready"))
    relocated = _place(package, _package_base(package))

    assert {s.name for s in relocated.patch_sites} == {f.name for f in package.functions}
    for site, f in zip(relocated.patch_sites, package.functions, strict=True):
        assert site.address == BIAS + baseline.address_of(f.name)
        assert decode_jmp_rel32(site.address, site.jump) == relocated.placement.code + f.code_offset
        assert site.pre_image == baseline.read(baseline.address_of(f.name), len(site.pre_image))


def test_a_placement_beyond_reach_is_refused_naming_each_function(packages: Packages, keys: Keys) -> None:
    package = _package(packages, keys, "18-two-functions")

    with pytest.raises(RefusedError) as refused:
        _place(package, BIAS + (8 << 30))  # 8 GiB above the image

    reasons = "\n".join(refused.value.reasons)
    for f in package.functions:
        assert f"function {f.name}" in reasons
    assert "does not fit the field" in reasons and "beyond ±2 GiB" in reasons


def _import_calls(package: Package, relocated: RelocatedImage, name: str) -> list[int]:
    """Targets of the package's call instructions whose relocation names import `name`."""
    index = [i.name for i in package.imports].index(name)
    md, placement, targets = _disassembler(), relocated.placement, []
    for r in package.relocations:
        if r.space is TargetSpace.IMPORT and r.target == index and r.section is PackageSection.CODE:
            insn = next(md.disasm(relocated.code[r.offset - 1 : r.offset + 4], placement.code + r.offset - 1))
            targets.append(insn.operands[0].imm)
    return targets


def test_a_far_import_is_called_through_an_absolute_stub(packages: Packages, keys: Keys) -> None:
    package = _package(packages, keys, "06-static-function")
    assert [i.name for i in package.imports] == ["strlen"]

    far = _place(package, _package_base(package), lambda r: ResolvedImport(r.name, FAR_LIBRARY))
    near_address = _package_base(package) + (1 << 20)
    near = _place(package, _package_base(package), lambda r: ResolvedImport(r.name, near_address))

    stubs = _import_calls(package, far, "strlen")
    assert stubs and all(far.placement.code + len(package.code) <= t < far.placement.rodata for t in stubs)
    for target in stubs:
        assert decode_abs_jmp(far.code[target - far.placement.code :]) == FAR_LIBRARY
    assert far.stubs_used == ("strlen",)
    assert _import_calls(package, near, "strlen") == [near_address] * len(stubs)
    assert near.stubs_used == ()


def test_an_import_bound_at_load_time_goes_through_a_package_slot(packages: Packages, keys: Keys) -> None:
    package = _package(packages, keys, "06-static-function")

    def bound(record: ImportRecord) -> ResolvedImport:
        return ResolvedImport(record.name, None, bound_at_load=True)

    relocated = _place(package, _package_base(package), bound)

    (binding,) = relocated.load_time_bindings
    assert binding.name == "strlen" and binding.version == "GLIBC_2.2.5" and binding.slot and binding.called
    slot = relocated.placement.data + binding.offset
    md = _disassembler()
    for target in _import_calls(package, relocated, "strlen"):
        stub = next(md.disasm(relocated.code[target - relocated.placement.code :][:6], target))
        assert stub.mnemonic == "jmp" and stub.address + stub.size + stub.operands[0].mem.disp == slot
    assert relocated.data[binding.offset : binding.offset + 8] == bytes(8)  # the dynamic linker fills it


def test_a_library_object_is_read_through_a_slot_holding_its_address(greet: dict[str, Path]) -> None:
    """libgreet's fix reads libc's `stderr`, which the library never used: a GOTPCREL to an import."""
    package = read_package(read_package_file(greet["package"])).package
    far = {record.name: FAR_LIBRARY + 0x1000 * i for i, record in enumerate(package.imports)}
    assert "stderr" in far

    relocated = _place(package, _package_base(package), lambda r: ResolvedImport(r.name, far[r.name]))

    placement, md = relocated.placement, _disassembler()
    index = [i.name for i in package.imports].index("stderr")
    (field,) = [r for r in package.relocations if r.space is TargetSpace.IMPORT and r.target == index]
    start = field.offset - 3  # REX, 8B, ModRM, then the 4-byte field
    insn = next(md.disasm(relocated.code[start : field.offset + 4], placement.code + start))
    slot = insn.address + insn.size + insn.operands[1].mem.disp
    assert insn.mnemonic == "mov" and placement.data <= slot < placement.data + len(relocated.data)
    assert struct.unpack_from("<Q", relocated.data, slot - placement.data)[0] == far["stderr"]


def test_an_unresolvable_import_is_refused_naming_it(packages: Packages, keys: Keys) -> None:
    package = _package(packages, keys, "06-static-function")

    def missing(record: ImportRecord) -> ResolvedImport:
        return ResolvedImport(record.name, None)

    with pytest.raises(RefusedError) as refused:
        _place(package, _package_base(package), missing)

    assert any("strlen" in reason for reason in refused.value.reasons)
