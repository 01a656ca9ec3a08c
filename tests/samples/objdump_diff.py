"""An independent, objdump-level comparison of two builds: which named functions differ.

It is the cross-check behind every sample's expected_changed / expected_added / expected_removed:
functions are cut at their symbol bounds, addresses that only moved are replaced by the symbol
they name, and references into read-only data by the bytes they point at.  It knows nothing of
hpkg; it exists so the corpus spec is checked by a second method, not by the engine under test.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SYMBOL = re.compile(r"^([0-9a-f]+)\s+([0-9a-f]+)\s+(\w)\s+(\S+)$")
_INSN = re.compile(r"^\s*([0-9a-f]+):\t(.*)$")
# `1090 <strlen@plt>` (a call or jump target) and `# 4010 <counter>` (a rip-relative comment).
_TARGET = re.compile(r"\b([0-9a-f]+) <([^>]+)>")
_DATA_SECTIONS = (".data", ".rodata", ".bss", ".tdata", ".tbss")
_RIP_DISPLACEMENT = re.compile(r"-?0x[0-9a-f]+\(%rip\)")


@dataclass(frozen=True)
class FunctionDiff:
    """Named functions of the fix that differ from, are new to, or are gone from the baseline."""

    changed: frozenset[str]
    added: frozenset[str]
    removed: frozenset[str]
    data_changed: frozenset[str]
    data_added: frozenset[str]
    data_removed: frozenset[str]


@dataclass(frozen=True)
class _Section:
    name: str
    address: int
    offset: int
    size: int
    zero_filled: bool


def _sections(binary: Path) -> list[_Section]:
    """The allocated sections that hold bytes in the file, from readelf."""
    out = subprocess.run(["readelf", "-SW", str(binary)], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
        if m and int(m.group(3), 16) != 0:
            name, kind, address, offset, size = m.groups()
            found.append(_Section(name, int(address, 16), int(offset, 16), int(size, 16), kind == "NOBITS"))
    return found


def _symbols(binary: Path, kinds: str) -> dict[str, tuple[int, int]]:
    """Sized symbols of the nm kinds given (name → address, size), duplicate local names suffixed."""
    command = ["nm", "-S", "--defined-only", str(binary)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    symbols: dict[str, tuple[int, int]] = {}
    for line in out.stdout.splitlines():
        m = _SYMBOL.match(line)
        if not m or m.group(3) not in kinds or int(m.group(2), 16) == 0:
            continue
        name = m.group(4)
        while name in symbols:
            name += "'"
        symbols[name] = (int(m.group(1), 16), int(m.group(2), 16))
    return symbols


def _dynamic_relocation_sites(binary: Path) -> set[int]:
    """Addresses relocations rewrite (pointers in data): their file bytes mean nothing alone."""
    out = subprocess.run(["readelf", "-rW", str(binary)], capture_output=True, text=True, check=True).stdout
    sites = set()
    in_debug = False
    for line in out.splitlines():
        if line.startswith("Relocation section"):
            # Relocations of non-allocated sections (.debug_*) count from their section start.
            in_debug = ".debug" in line
        m = re.match(r"^([0-9a-f]{8,16})\s+[0-9a-f]+\s+R_X86_64_", line)
        if m and not in_debug:
            sites.add(int(m.group(1), 16))
    return sites


class _Image:
    """One build: its function bodies in a canonical text form."""

    def __init__(self, binary: Path) -> None:
        self.data = binary.read_bytes()
        self.sections = _sections(binary)
        self.functions = _symbols(binary, "tTwW")
        self.objects = {
            name: where
            for name, where in _symbols(binary, "dDbBrRvV").items()
            if self._section_of(where[0]).startswith(_DATA_SECTIONS)
        }
        self.pointer_sites = _dynamic_relocation_sites(binary)
        self.text = self._disassemble(binary)

    def _section_of(self, address: int) -> str:
        for s in self.sections:
            if s.address <= address < s.address + s.size:
                return s.name
        return ""

    def object_bytes(self, name: str) -> bytes:
        """A data object's initial bytes (pointers masked), or its size alone when it is zero-filled."""
        address, size = self.objects[name]
        for s in self.sections:
            if s.address <= address < s.address + s.size and not s.zero_filled:
                start = s.offset + address - s.address
                raw = bytearray(self.data[start : start + size])
                for site in range(address, address + size):
                    if site in self.pointer_sites:
                        end = min(site - address + 8, size)
                        raw[site - address : end] = b"P" * (end - (site - address))
                return bytes(raw)
        return f"zero-filled {size}".encode()

    def _pointee(self, address: int) -> str:
        """What a reference into read-only data points at: up to 32 bytes of it, as hex."""
        for s in self.sections:
            if s.address <= address < s.address + s.size and s.name.startswith(".rodata"):
                start = s.offset + address - s.address
                chunk = self.data[start : min(start + 32, s.offset + s.size)]
                end = chunk.find(b"\0")
                return (chunk if end < 0 else chunk[:end]).hex()
        return ""

    def _canonical(self, insn: str, owner: str) -> str:
        insn = insn.split("\t", 1)[-1] if "\t" in insn else insn
        insn = _RIP_DISPLACEMENT.sub("REL(%rip)", insn)

        def target(m: re.Match[str]) -> str:
            symbol = m.group(2)
            base = symbol.split("+")[0]
            if base == owner or base in self.functions or "@" in base:
                return f"<{symbol}>" if base == owner else f"<{base}>"
            return f"<data:{self._pointee(int(m.group(1), 16)) or base}>"

        return _TARGET.sub(target, insn).strip()

    def _disassemble(self, binary: Path) -> dict[str, list[str]]:
        out = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", "-j", ".text", str(binary)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        by_address = {}
        for line in out.splitlines():
            m = _INSN.match(line)
            if m:
                by_address[int(m.group(1), 16)] = m.group(2)
        bodies: dict[str, list[str]] = {}
        for name, (start, size) in self.functions.items():
            owner = name.rstrip("'")
            inside = (insn for a, insn in sorted(by_address.items()) if start <= a < start + size)
            bodies[name] = [self._canonical(insn, owner) for insn in inside]
        return bodies


def compare(baseline: Path, fix: Path) -> FunctionDiff:
    """Compare two builds of one program function by function."""
    old, new = _Image(baseline), _Image(fix)
    changed = {n for n in old.text.keys() & new.text.keys() if old.text[n] != new.text[n]}
    both = old.objects.keys() & new.objects.keys()
    data_changed = {n for n in both if old.object_bytes(n) != new.object_bytes(n)}
    return FunctionDiff(
        changed=frozenset(changed),
        added=frozenset(new.text.keys() - old.text.keys()),
        removed=frozenset(old.text.keys() - new.text.keys()),
        data_changed=frozenset(data_changed),
        data_added=frozenset(new.objects.keys() - old.objects.keys()),
        data_removed=frozenset(old.objects.keys() - new.objects.keys()),
    )


if __name__ == "__main__":
    import sys

    result = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print("changed:", sorted(result.changed))
    print("added:  ", sorted(result.added))
    print("removed:", sorted(result.removed))
    print("data changed:", sorted(result.data_changed))
    print("data added:  ", sorted(result.data_added))
    print("data removed:", sorted(result.data_removed))
