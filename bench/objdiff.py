"""Ground truth for named functions: does a function's objdump listing differ once addresses are masked?

A patch touches source lines; whether a function's machine code changed is another question (a
refactor may compile to the same instructions, and a fix may land in an inlined callee). For
every named function the bench asks objdump, masking what moves between builds: rip-relative
displacements, branch targets outside the function (kept as the callee's name when objdump
gives an exact one, e.g. `<free@plt>`), and in-function branch targets (kept as offsets).
"""

from __future__ import annotations

import bisect
import re
import subprocess
from pathlib import Path

from bench.ehframe import FdeRange

_LINE = re.compile(r"^\s*([0-9a-f]+):\t(.*)$")
_RIP = re.compile(r"\[rip\+0x[0-9a-f]+\]")
_BRANCH = re.compile(r"^(bnd )?(notrack )?(call|jmp|j[a-z]+|loop[a-z]*)\s+([0-9a-f]+)(?: <([^>]*)>)?$")


def _listing(path: Path) -> tuple[list[int], list[str]]:
    """Every instruction of `path` as (addresses, texts), in address order."""
    argv = ["objdump", "-d", "--no-show-raw-insn", "-M", "intel", "-w", str(path)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    addresses, texts = [], []
    for line in out.splitlines():
        match = _LINE.match(line)
        if match:
            addresses.append(int(match.group(1), 16))
            texts.append(match.group(2).split("#", 1)[0].strip())
    return addresses, texts


def _normalise(text: str, start: int, end: int) -> str:
    text = _RIP.sub("[rip+X]", text)
    branch = _BRANCH.match(text)
    if branch:
        target = int(branch.group(4), 16)
        mnemonic = branch.group(3)
        if start <= target < end:
            return f"{mnemonic} .+{target - start:#x}"
        name = branch.group(5) or ""
        return f"{mnemonic} <{name if name and '+' not in name else 'elsewhere'}>"
    return text


def function_code(path: Path, functions: dict[str, FdeRange]) -> dict[str, tuple[str, ...]]:
    """The masked instruction listing of each named function in one file."""
    addresses, texts = _listing(path)
    result = {}
    for name, bounds in functions.items():
        end = bounds.start + bounds.size
        low = bisect.bisect_left(addresses, bounds.start)
        high = bisect.bisect_left(addresses, end)
        result[name] = tuple(_normalise(texts[i], bounds.start, end) for i in range(low, high))
    return result


def changed_functions(
    old: Path, new: Path, old_functions: dict[str, FdeRange], new_functions: dict[str, FdeRange]
) -> frozenset[str]:
    """Names present in both builds whose masked listings differ."""
    common = old_functions.keys() & new_functions.keys()
    old_code = function_code(old, {n: old_functions[n] for n in common})
    new_code = function_code(new, {n: new_functions[n] for n in common})
    return frozenset(n for n in common if old_code[n] != new_code[n])
