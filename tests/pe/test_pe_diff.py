"""`hpkg diff --json` on every PE sample gives exactly the sets its sample.toml expects, and the spec
agrees with an independent objdump comparison of the two mingw-w64 builds.

The stripped flavour (`x86_64-w64-mingw32-strip`: no COFF symbols, `.pdata` kept) names its functions
`sub_<address>`; they are translated back through `objdump -t` of the unstripped build (the same code
at the same addresses), independent of the engine's own function discovery.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from objdump_pe_diff import OBJDUMP, compare  # noqa: E402
from pe_corpus import PeSample, load_pe_samples  # noqa: E402

from hpkg.cli import cli  # noqa: E402

SAMPLES = load_pe_samples()
# `[119](sec  1)(fl 0x00)(ty   20)(scl   2) (nx 0) 0x00000000000005b0 path_is_safe`: a function.
_FUNCTION_SYMBOL = re.compile(r"\(sec\s+(\d+)\)\(fl 0x00\)\(ty\s+20\).* 0x([0-9a-f]+) (\S+)$")


def _code_symbols(path: Path) -> dict[int, set[str]]:
    """Link address → the function symbols there, from binutils' COFF symbol table and section headers."""
    headers = subprocess.run([OBJDUMP, "-h", str(path)], capture_output=True, text=True, check=True).stdout
    vmas = [
        int(m.group(1), 16) for m in re.finditer(r"^\s*\d+\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)", headers, re.M)
    ]
    table = subprocess.run([OBJDUMP, "-t", str(path)], capture_output=True, text=True, check=True).stdout
    names: dict[int, set[str]] = {}
    for line in table.splitlines():
        m = _FUNCTION_SYMBOL.search(line)
        if m:
            names.setdefault(vmas[int(m.group(1)) - 1] + int(m.group(2), 16), set()).add(m.group(3))
    return names


def _data_object_at(path: Path, region: str) -> str:
    """The data symbol of the unstripped build that holds `section+0xoffset` (the last one at or
    before it in that section), from binutils' section headers and COFF symbol table."""
    section, _, offset = region.partition("+")
    headers = subprocess.run([OBJDUMP, "-h", str(path)], capture_output=True, text=True, check=True).stdout
    names = re.findall(r"^\s*\d+\s+(\S+)\s", headers, re.M)
    index = names.index(section) + 1
    table = subprocess.run([OBJDUMP, "-t", str(path)], capture_output=True, text=True, check=True).stdout
    at = int(offset or "0", 16)
    owner, start = region, -1
    for m in re.finditer(
        rf"\(sec\s+{index}\)\(fl 0x00\)\(ty\s+0\)\(scl\s+[23]\).* 0x([0-9a-f]+) (\S+)$", table, re.M
    ):
        value = int(m.group(1), 16)
        if start < value <= at and not m.group(2).startswith("."):
            owner, start = m.group(2), value
    return owner


def _named(entries: list[dict], symbols: dict[str, dict[int, set[str]]]) -> set[str]:
    found = set()
    for entry in entries:
        name = entry["name"]
        if name.startswith("sub_"):
            side = "old" if "old_address" in entry else "new"
            name = min(symbols[side].get(entry[f"{side}_address"], {name}))
        found.add(name)
    return found


@pytest.mark.parametrize("flavour", ["ready", "stripped"])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_diff_reports_exactly_the_expected_functions(pe_corpus, sample: PeSample, flavour: str) -> None:
    expected = sample.expectations[flavour]
    args = ["diff", "--json", str(sample.binary("baseline", flavour)), str(sample.binary("fixed", flavour))]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["mode"] == "disassembly"  # PE files carry no static relocations
    symbols = {
        "old": _code_symbols(sample.symbols_twin("baseline", flavour)),
        "new": _code_symbols(sample.symbols_twin("fixed", flavour)),
    }
    if flavour == "stripped":
        assert all(e["name"].startswith("sub_") for e in document["changed"] + document["added"])
    assert _named(document["changed"], symbols) == expected.changed
    assert _named(document["added"], symbols) == expected.added
    assert _named(document["removed"], symbols) == expected.removed
    data: dict[str, set[str]] = {"changed": set(), "added": set(), "removed": set()}
    for entry in document["data"]:
        group = "changed" if entry["change"] in ("value-changed", "size-changed") else entry["change"]
        name = entry["name"]
        if name.startswith(".") and flavour == "stripped":
            name = _data_object_at(sample.symbols_twin("baseline", flavour), name)
        data[group].add(name)
    assert data == {
        "changed": set(expected.data_changed),
        "added": set(expected.data_added),
        "removed": set(expected.data_removed),
    }


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_the_spec_agrees_with_objdump(pe_corpus, sample: PeSample) -> None:
    found = compare(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"), sample.sources())
    expected = sample.expectations["ready"]
    assert (found.changed, found.added, found.removed) == (expected.changed, expected.added, expected.removed)


def test_the_jump_table_of_the_switch_is_recovered(pe_corpus) -> None:
    """08's run_operation dispatches through a table of int32 offsets in .rdata: the diff must see the
    table as the switch's (its entries as places in the function), not as opaque read-only bytes."""
    from hpkg.builder.diff import diff_files
    from hpkg.builder.model import TargetKind

    sample = next(s for s in SAMPLES if s.name == "08-jump-table")
    result = diff_files(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    pair = result.pair("run_operation")
    assert pair is not None and pair.old is not None
    references = pair.old.table.finder(pair.old.function)
    tables = [r.target for r in references if r.target.kind is TargetKind.JUMP_TABLE]
    assert len(tables) == 1 and len(tables[0].entries) == 8  # `cmp $0x7,%ecx; ja default`: cases 0..7
