"""Which C functions a source change touched: the tool behind the function lists in bench/pairs.toml.

`python -m bench.touched OLD_TREE NEW_TREE` compares every .c file present in both trees, maps
each changed line to the function around it (universal-ctags gives each function's first and last
line), and prints one line per file: the touched functions, and the ones that are new.

How the libxml2 trees were made (2026-11-29): `apt-get source --download-only` of both versions,
with a private sources.list holding the deb-src lines (`-o Dir::Etc::sourcelist=...`); the
upstream tarball unpacked twice and each version's debian/patches/series applied with
`patch -p1` in order. For one patch at a time, apply the series up to it in OLD_TREE and up to
and including it in NEW_TREE.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceFunction:
    """A function's name and its first and last source line (1-based, inclusive)."""

    name: str
    first: int
    last: int


def source_functions(path: Path) -> list[SourceFunction]:
    """The C function definitions in one file, as universal-ctags reports them."""
    argv = ["ctags", "--fields=+ne", "--kinds-C=f", "-o", "-", str(path)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    functions = []
    for line in out.splitlines():
        fields = line.split("\t")
        extras = dict(f.split(":", 1) for f in fields[3:] if ":" in f)
        if "line" in extras and "end" in extras:
            functions.append(SourceFunction(fields[0], int(extras["line"]), int(extras["end"])))
    return functions


def _owner(functions: list[SourceFunction], line: int) -> str | None:
    for function in functions:
        if function.first <= line <= function.last:
            return function.name
    return None


def touched_functions(old: Path, new: Path) -> tuple[set[str], set[str]]:
    """(touched, added) function names between two versions of one C file."""
    old_lines = old.read_text(errors="replace").splitlines()
    new_lines = new.read_text(errors="replace").splitlines()
    old_functions, new_functions = source_functions(old), source_functions(new)
    touched: set[str] = set()
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        # Removed or replaced lines belong to old functions, inserted or replacing ones to new functions.
        for line in range(i1 + 1, i2 + 1):
            name = _owner(old_functions, line)
            if name:
                touched.add(name)
        for line in range(j1 + 1, j2 + 1):
            name = _owner(new_functions, line)
            if name:
                touched.add(name)
    added = {f.name for f in new_functions} - {f.name for f in old_functions}
    return touched, added


def main(argv: list[str] | None = None) -> int:
    """Print the touched and added functions of every changed .c file of two source trees."""
    parser = argparse.ArgumentParser(prog="python -m bench.touched", description=__doc__.splitlines()[0])
    parser.add_argument("old_tree", type=Path)
    parser.add_argument("new_tree", type=Path)
    arguments = parser.parse_args(argv)
    if shutil.which("ctags") is None:
        print("error: universal-ctags is not installed (apt-get install universal-ctags)", file=sys.stderr)
        return 2
    for new_file in sorted(arguments.new_tree.rglob("*.c")):
        relative = new_file.relative_to(arguments.new_tree)
        old_file = arguments.old_tree / relative
        if not old_file.is_file() or old_file.read_bytes() == new_file.read_bytes():
            continue
        touched, added = touched_functions(old_file, new_file)
        touched_list, added_list = ", ".join(sorted(touched)) or "-", ", ".join(sorted(added)) or "-"
        print(f"{relative}: touched {touched_list}; added {added_list}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
