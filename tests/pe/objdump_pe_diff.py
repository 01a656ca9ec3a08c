"""An independent, objdump-level comparison of two mingw-w64 builds: which named functions differ.

The PE counterpart of tests/samples/objdump_diff.py, the cross-check behind each PE sample's
expected_changed / expected_added / expected_removed. It reads only binutils' output
(`x86_64-w64-mingw32-objdump -h`, `-t` and `-d`): a function is the code between one `.text` label and
the next (padding dropped), an address that only moved is replaced by the label it names, a
rip-relative displacement is masked, a reference into `.rdata` is replaced by the bytes it points at
(a pointer word there by the symbol it points to). Import stubs (a lone `jmp *__imp_x(%rip)`) are the
import, not functions. Only the program's own functions are compared: those the COFF symbol table
lists after a `.file` record naming one of its sources (the C runtime's code holds tables of code
offsets this text form cannot follow). It knows nothing of hpkg.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

OBJDUMP = "x86_64-w64-mingw32-objdump"
_LABEL = re.compile(r"^([0-9a-f]+) <(.+)>:$")
_INSN = re.compile(r"^\s*([0-9a-f]+):\t(.*)$")
_TARGET = re.compile(r"\b([0-9a-f]+) <([^>]+)>")
_RIP_DISPLACEMENT = re.compile(r"-?0x[0-9a-f]+\(%rip\)")
_SECTION = re.compile(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)")
# `[118](sec  1)(fl 0x00)(ty   20)(scl   3) (nx 0) 0x0000000000000550 path_is_safe.part.0`
_SYMBOL = re.compile(
    r"^\[\s*\d+\]\(sec\s+(-?\d+)\).*\(ty\s+([0-9a-f]+)\)\(scl\s+(\d+)\).* 0x([0-9a-f]+) (.+)$"
)
_PADDING = re.compile(r"^(nop[wl]?\b|xchg\s+%ax,%ax|int3|cs nopw|data16|\(bad\))")


@dataclass(frozen=True)
class FunctionDiff:
    """Named functions of the fix that differ from, are new to, or are gone from the baseline."""

    changed: frozenset[str]
    added: frozenset[str]
    removed: frozenset[str]


class _Image:
    """One build: its functions' bodies in a canonical text form."""

    def __init__(self, binary: Path) -> None:
        self.data = binary.read_bytes()
        self.sections = self._sections(binary)
        self.files, self.symbols = self._symbol_table(binary)
        self.bodies = self._functions(binary)

    def _symbol_table(self, binary: Path) -> tuple[dict[str, str], dict[int, str]]:
        """(function name → the source file whose `.file` record precedes it, link address → a symbol)."""
        out = subprocess.run([OBJDUMP, "-t", str(binary)], capture_output=True, text=True, check=True).stdout
        files: dict[str, str] = {}
        addresses: dict[int, str] = {}
        current = ""
        for line in out.splitlines():
            m = _SYMBOL.match(line)
            if not m:
                continue
            section, kind, storage, value, name = (
                int(m.group(1)),
                m.group(2),
                int(m.group(3)),
                m.group(4),
                m.group(5),
            )
            if storage == 103:  # C_FILE: the symbols up to the next one come from this source
                current = name.strip()
            elif section > 0:
                if kind == "20":
                    files.setdefault(name, current)
                address = (
                    self.sections[section - 1][1] + int(value, 16) if section <= len(self.sections) else 0
                )
                addresses.setdefault(address, name)
        return files, addresses

    @staticmethod
    def _sections(binary: Path) -> list[tuple[str, int, int, int]]:
        """(name, address, size, file offset) of each section, from `objdump -h`."""
        out = subprocess.run([OBJDUMP, "-h", str(binary)], capture_output=True, text=True, check=True).stdout
        found = []
        for line in out.splitlines():
            m = _SECTION.match(line)
            if m:
                found.append((m.group(1), int(m.group(3), 16), int(m.group(2), 16), int(m.group(4), 16)))
        return found

    def _pointee(self, address: int) -> str | None:
        """Up to 32 bytes (to a NUL) at an address of `.rdata`, as hex, or the symbol a pointer word
        there points to; None elsewhere."""
        for name, start, size, offset in self.sections:
            if name == ".rdata" and start <= address < start + size:
                at = offset + address - start
                word = int.from_bytes(self.data[at : at + 8], "little")
                if word in self.symbols:
                    return f"ptr:{self.symbols[word]}"
                chunk = self.data[at : min(at + 32, offset + size)]
                return chunk.partition(b"\0")[0].hex()
        return None

    def _canonical(self, insn: str, owner: str, labels: set[str]) -> str:
        insn = _RIP_DISPLACEMENT.sub(
            "REL(%rip)", insn.split("#")[0] + ("#" + insn.split("#", 1)[1] if "#" in insn else "")
        )

        def target(m: re.Match[str]) -> str:
            symbol = m.group(2)
            base = symbol.split("+")[0]
            if base == owner:
                return f"<{symbol}>"
            if base in labels or base.startswith("__imp_"):
                return f"<{base}>"
            pointee = self._pointee(int(m.group(1), 16))
            return f"<data:{pointee}>" if pointee is not None else f"<{symbol}>"

        return _TARGET.sub(target, insn).strip()

    def _functions(self, binary: Path) -> dict[str, list[str]]:
        out = subprocess.run(
            [OBJDUMP, "-d", "--no-show-raw-insn", "-j", ".text", str(binary)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        raw: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in out.splitlines():
            label = _LABEL.match(line)
            if label:
                name = label.group(2)
                while name in raw:  # two local functions of one name in different files
                    name += "'"
                current = raw[name] = []
                continue
            m = _INSN.match(line)
            if m and current is not None:
                current.append(m.group(2).strip())
        labels = {name.rstrip("'") for name in raw}
        bodies: dict[str, list[str]] = {}
        for name, insns in raw.items():
            while insns and _PADDING.match(insns[-1]):
                insns.pop()
            if not insns:
                continue
            if len(insns) == 1 and insns[0].startswith("jmp") and "<__imp_" in insns[0]:
                continue  # an import stub
            bodies[name] = [self._canonical(i, name.rstrip("'"), labels) for i in insns]
        return bodies


def compare(baseline: Path, fix: Path, sources: set[str]) -> FunctionDiff:
    """Compare the functions of two builds of one program that come from `sources` (file names)."""
    old, new = _Image(baseline), _Image(fix)
    old_own = {n for n in old.bodies if old.files.get(n.rstrip("'")) in sources}
    new_own = {n for n in new.bodies if new.files.get(n.rstrip("'")) in sources}
    return FunctionDiff(
        changed=frozenset(n for n in old_own & new_own if old.bodies[n] != new.bodies[n]),
        added=frozenset(new_own - old_own),
        removed=frozenset(old_own - new_own),
    )


if __name__ == "__main__":
    import sys

    result = compare(Path(sys.argv[1]), Path(sys.argv[2]), set(sys.argv[3:]))
    print("changed:", sorted(result.changed))
    print("added:  ", sorted(result.added))
    print("removed:", sorted(result.removed))
