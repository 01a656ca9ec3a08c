"""Resolve a package's relocations by hand and check, symbolically, that every reference lands right.

No loader: the package is "placed" at made-up addresses after the baseline image, each relocation
is computed from the x86-64 psABI formula, and the address every patched field then designates is
described by name (function+offset, variable+offset, import, GOT slot, or the bytes found there).
The same description is made of the fix's own reference, read from the fix through the diff's
match, and the two must agree. Names come from readelf/objdump, not from hpkg.
"""

from __future__ import annotations

import re
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PAGE = 0x1000
_NUMBER = re.compile(r"\.\d+(?=\.|$)")


def _stable(name: str) -> str:
    return _NUMBER.sub("", name.split("@")[0])


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@dataclass
class ElfFacts:
    """Symbols, PLT entries and GOT slots of one ELF file, from binutils."""

    path: Path
    functions: list[tuple[int, int, str]] = field(default_factory=list)
    objects: list[tuple[int, int, str]] = field(default_factory=list)
    plt: dict[int, str] = field(default_factory=dict)
    got: dict[int, str] = field(default_factory=dict)
    copies: set[int] = field(default_factory=set)
    end: int = 0
    raw: bytes = b""
    sections: list[tuple[int, int, int]] = field(default_factory=list)  # (address, size, file offset)

    @classmethod
    def read(cls, path: Path, symbols_from: Path | None = None) -> ElfFacts:
        facts = cls(path, raw=path.read_bytes())
        for line in _run("readelf", "-sW", str(symbols_from or path)).splitlines():
            f = line.split()
            if len(f) < 8 or not f[0][:-1].isdigit() or f[6] == "UND":
                continue
            value, size, kind, name = int(f[1], 16), int(f[2]), f[3], f[7]
            if kind == "FUNC" and value:
                facts.functions.append((value, size, name))
            elif kind in ("OBJECT", "TLS") and value:
                facts.objects.append((value, size, name))
        plt = _run("objdump", "-d", "-j", ".plt", "-j", ".plt.sec", "-j", ".plt.got", str(path))
        for line in plt.splitlines():
            m = re.match(r"^([0-9a-f]+) <(.+)@plt>:", line)
            if m:
                facts.plt[int(m.group(1), 16)] = m.group(2)
        for line in _run("readelf", "-rW", str(path)).splitlines():
            f = line.split()
            if len(f) >= 5 and re.fullmatch(r"[0-9a-f]{16}", f[0]):
                name = f[4].split("@")[0]
                if f[2] in ("R_X86_64_GLOB_DAT", "R_X86_64_JUMP_SLOT"):
                    facts.got[int(f[0], 16)] = name
                elif f[2] == "R_X86_64_COPY":
                    facts.copies.add(int(f[0], 16))
        for line in _run("readelf", "-lW", str(path)).splitlines():
            f = line.split()
            if f and f[0] == "LOAD":
                facts.end = max(facts.end, int(f[2], 16) + int(f[5], 16))
        for line in _run("readelf", "-SW", str(path)).splitlines():
            m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
            if m and m.group(2) != "NOBITS" and int(m.group(3), 16):
                facts.sections.append((int(m.group(3), 16), int(m.group(5), 16), int(m.group(4), 16)))
        return facts

    def bytes_at(self, address: int, size: int) -> bytes:
        for start, length, offset in self.sections:
            if start <= address < start + length:
                begin = offset + address - start
                return self.raw[begin : begin + min(start + length - address, size)]
        return b""

    def describe(self, address: int) -> tuple:
        """What lives at a link address of this file, by name where it has one, else by content."""
        if address in self.plt:
            return ("import", self.plt[address])
        if address in self.got:
            return ("got", self.got[address])
        if address in self.copies:
            return ("import", next(_stable(n) for a, _, n in self.objects if a == address))
        for start, size, name in self.functions:
            if start <= address < start + max(size, 1):
                return ("fn", _stable(name), address - start)
        for start, size, name in self.objects:
            if start <= address < start + max(size, 1):
                return ("obj", _stable(name), address - start)
        return content(self.bytes_at(address, 4096))


def content(window: bytes) -> tuple:
    """Read-only data by what it holds: a C string up to its NUL, else its first 8 bytes."""
    nul = window.find(b"\0")
    if nul > 0 and all(32 <= b < 127 or b in (9, 10, 13) for b in window[:nul]):
        return ("bytes", window[: nul + 1])
    return ("bytes", window[:8])


@dataclass
class Placement:
    """Made-up runtime addresses for a package, after the baseline (load bias 0: link addresses)."""

    code: int
    rodata: int
    data: int
    bss: int
    imports: int
    slots: int

    @classmethod
    def after(cls, baseline_end: int, package) -> Placement:
        code = (baseline_end + PAGE - 1) // PAGE * PAGE + 16 * PAGE
        rodata = code + (len(package.code) // PAGE + 1) * PAGE
        data = rodata + (len(package.rodata) // PAGE + 1) * PAGE
        bss = data + (len(package.data) // PAGE + 1) * PAGE
        imports = bss + (package.bss_size // PAGE + 1) * PAGE
        return cls(code, rodata, data, bss, imports, imports + PAGE)


class Relocated:
    """A package's sections after applying every relocation at a placement (as a loader would)."""

    def __init__(self, package, baseline: ElfFacts) -> None:
        self.package = package
        self.at = Placement.after(baseline.end, package)
        self.sections = {"CODE": bytearray(package.code), "RODATA": bytearray(package.rodata),
                         "DATA": bytearray(package.data), "UNWIND": bytearray(package.unwind)}
        at = self.at
        self.bases = {"CODE": at.code, "RODATA": at.rodata, "DATA": at.data, "BSS": at.bss,
                      "UNWIND": at.slots + 16 * PAGE}
        self.slots: dict[int, int] = {}  # slot address → the address it holds
        for r in package.relocations:
            self._apply(r)

    def symbol(self, r) -> int:
        space = r.space.name
        if space == "BASELINE":
            return r.target
        if space == "IMPORT":
            return self.at.imports + 16 * r.target
        return self.bases[space] + r.target

    def _slot(self, value: int) -> int:
        for address, held in self.slots.items():
            if held == value:
                return address
        address = self.at.slots + 8 * len(self.slots)
        self.slots[address] = value
        return address

    def _apply(self, r) -> None:
        s, a = self.symbol(r), r.addend
        p = self.bases[r.section.name] + r.offset
        kind = r.kind.name
        if kind == "R_X86_64_64":
            packed = struct.pack("<Q", (s + a) & (2**64 - 1))
        elif kind in ("R_X86_64_PC32", "R_X86_64_PLT32"):
            packed = struct.pack("<i", s + a - p)
        elif kind in ("R_X86_64_GOTPCREL", "R_X86_64_GOTPCRELX", "R_X86_64_REX_GOTPCRELX"):
            packed = struct.pack("<i", self._slot(s) + a - p)
        elif kind == "R_X86_64_32":
            packed = struct.pack("<I", s + a)
        elif kind == "R_X86_64_32S":
            packed = struct.pack("<i", s + a)
        else:
            raise AssertionError(f"unexpected relocation kind {kind}")
        section = self.sections[r.section.name]
        assert section[r.offset : r.offset + len(packed)] == bytes(len(packed)), "relocated field not zeroed"
        section[r.offset : r.offset + len(packed)] = packed


def check_package(package, diff, old: ElfFacts, new: ElfFacts) -> int:
    """Assert every non-internal reference of every package function designates what the fix's does.

    Returns the number of references checked (so a caller can insist that it is not zero).
    """
    placed = Relocated(package, old)
    code = placed.sections["CODE"]
    new_function = {}  # code offset → the fix's CanonicalFunction
    for f in package.functions:
        pair = next(p for p in diff.pairs if p.old and p.old.function.address == f.baseline_address)
        new_function[f.code_offset] = pair.new
    for f in package.added_functions:
        pair = next(p for p in diff.pairs if p.old is None and p.new.function.name == f.name)
        new_function[f.code_offset] = pair.new
    spans = sorted((off, off + c.function.size, c) for off, c in new_function.items())

    def describe_placed(address: int) -> tuple:
        if placed.at.code <= address < placed.at.code + len(code):
            off = address - placed.at.code
            for start, end, c in spans:
                if start <= off <= end:
                    return new.describe(c.function.address + off - start)
            return ("package-code-gap", off)
        for name, base, size in (("RODATA", placed.at.rodata, len(package.rodata)),
                                 ("DATA", placed.at.data, len(package.data)),
                                 ("BSS", placed.at.bss, package.bss_size)):
            if base <= address < base + max(size, 1):
                off = address - base
                for d in package.data_objects:
                    if d.section.name == name and d.offset <= off < d.offset + max(d.size, 1):
                        return ("obj", _stable(d.name), off - d.offset)
                return content(bytes(placed.sections[name][off : off + 4096]))
        if address in placed.slots:
            return ("slot", describe_placed(placed.slots[address]))
        if placed.at.imports <= address < placed.at.slots:
            return ("import", package.imports[(address - placed.at.imports) // 16].name)
        return old.describe(address)

    def normal(description: tuple) -> tuple:
        # A GOT slot (the fix's or one the loader makes) stands for the import it holds.
        if description[0] == "got":
            return ("import", description[1])
        if description[0] == "slot":
            return normal(description[1])
        return description

    checked = 0
    for start, _, c in spans:
        fn = c.function
        for ref in c.references:
            kind = ref.target.kind.value
            if kind == "internal" or ref.kind.value in ("tpoff32", "pc8"):
                continue
            field_at = placed.at.code + start + ref.location
            raw = bytes(code[start + ref.location : start + ref.location + ref.width])
            if ref.kind.value in ("abs32", "abs32s", "abs64"):
                fmt = {4: "<I" if ref.kind.value == "abs32" else "<i", 8: "<Q"}[ref.width]
                designated = struct.unpack(fmt, raw)[0]
            else:
                designated = field_at - ref.addend + struct.unpack("<i", raw)[0]
            if kind == "jump-table":
                # The copy's entries are relocated, so its bytes differ from the fix's: compare the cases.
                checked += _check_table(ref, c, designated, placed, new, describe_placed)
                continue
            expected = new.describe(ref.target.address)
            got = describe_placed(designated)
            assert normal(got) == normal(expected), (fn.name, hex(ref.location), got, expected)
            checked += 1
    return checked


def _check_table(ref, canonical, table: int, placed: Relocated, new: ElfFacts, describe_placed) -> int:
    """Each relocated switch-table entry leads to the case the fix's table leads to.

    PIC tables hold int32 `case - table`; non-PIC tables hold absolute 8-byte case addresses.
    """
    count = len(ref.target.entries)
    width = 4 if ref.kind.value == "pc32" else 8
    assert placed.at.rodata <= table < placed.at.rodata + len(placed.package.rodata), "table not in rodata"
    off = table - placed.at.rodata
    rodata = placed.sections["RODATA"]
    new_table = new.bytes_at(ref.target.address, width * count)
    for i in range(count):
        if width == 4:
            case = table + struct.unpack_from("<i", rodata, off + 4 * i)[0]
            new_case = ref.target.address + struct.unpack_from("<i", new_table, 4 * i)[0]
        else:
            case = struct.unpack_from("<Q", rodata, off + 8 * i)[0]
            new_case = struct.unpack_from("<Q", new_table, 8 * i)[0]
        assert describe_placed(case) == new.describe(new_case), (canonical.function.name, "entry", i)
    return count
