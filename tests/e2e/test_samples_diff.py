"""`hpkg diff --json` on every sample of the corpus gives exactly the sets its sample.toml expects.

One diff per sample and flavour: the hotpatch-ready build (relocation mode), the stripped build
alone (disassembly mode, unnamed functions), the stripped build with its symbols twins passed as
--old-debug/--new-debug, and plain -O2 where a sample declares it. A stripped build names its
functions `sub_<address>`; they are translated back through `nm` of the unstripped twin (the same
code at the same addresses), which is independent of the engine's own function discovery.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import Expectation, Sample, build_corpus, load_samples  # noqa: E402

from hpkg.cli import cli  # noqa: E402

# (flavour of the sample, whether the symbols twins go along as debug files)
VARIANTS = {"ready": False, "stripped": False, "stripped+debug": True, "plain": False}


def _cases() -> list:
    cases = []
    for sample in load_samples():
        for flavour in sample.flavours:
            labels = ("stripped", "stripped+debug") if flavour == "stripped" else (flavour,)
            cases.extend(pytest.param(sample, label, id=f"{sample.name}-{label}") for label in labels)
    return cases


@pytest.fixture(scope="session")
def corpus() -> None:
    build_corpus()


def _code_symbols(path: Path) -> dict[int, set[str]]:
    """Link address → the names of the code symbols there, from binutils' nm."""
    out = subprocess.run(["nm", "--defined-only", str(path)], capture_output=True, text=True, check=True)
    names: dict[int, set[str]] = {}
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "tTiW":
            names.setdefault(int(fields[0], 16), set()).add(fields[2])
    return names


def _section_headers(path: Path) -> dict[int, tuple[str, int]]:
    """Section index → (name, address), from binutils' readelf."""
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    found = {}
    for m in re.finditer(r"^\s*\[\s*(\d+)\]\s+(\S+)\s+\S+\s+([0-9a-f]+)", out, re.MULTILINE):
        found[int(m.group(1))] = (m.group(2), int(m.group(3), 16))
    return found


def _section_addresses(path: Path) -> dict[str, int]:
    return {name: address for name, address in _section_headers(path).values()}


def _data_symbols(path: Path) -> dict[str, tuple[int, int, str]]:
    """Data object name → (address, size, section name), from binutils' readelf of a full build."""
    sections = _section_headers(path)
    out = subprocess.run(["readelf", "-sW", str(path)], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[3] == "OBJECT" and fields[6].isdigit():
            section = sections.get(int(fields[6]), ("", 0))[0]
            found[fields[7].split("@")[0]] = (int(fields[1], 16), int(fields[2], 0), section)
    return found


def _named(
    entries: list[dict], symbols: dict[str, dict[int, set[str]]], expected: frozenset[str]
) -> set[str]:
    """The reported names, with `sub_<address>` turned into the twin's symbol at that address."""
    found = set()
    for entry in entries:
        name = entry["name"]
        if name.startswith("sub_"):
            side = "old" if "old_address" in entry else "new"
            address = int(entry[f"{side}_address"], 16)
            aliases = symbols[side].get(address, {name})
            name = min(aliases & expected) if aliases & expected else min(aliases)
        found.add(name)
    return found


def _diff(sample: Sample, flavour: str, with_debug: bool) -> dict:
    args = ["diff", "--json", str(sample.binary("baseline", flavour)), str(sample.binary("fixed", flavour))]
    if with_debug:
        args += ["--old-debug", str(sample.symbols_twin("baseline", flavour))]
        args += ["--new-debug", str(sample.symbols_twin("fixed", flavour))]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(("sample", "variant"), _cases())
def test_diff_reports_exactly_the_expected_sets(corpus, sample: Sample, variant: str) -> None:
    flavour = variant.partition("+")[0]
    expected: Expectation = sample.expectations[flavour]
    document = _diff(sample, flavour, VARIANTS[variant])
    assert document["mode"] == ("disassembly" if flavour == "stripped" else "relocations")
    symbols = {
        "old": _code_symbols(sample.symbols_twin("baseline", flavour)),
        "new": _code_symbols(sample.symbols_twin("fixed", flavour)),
    }
    assert _named(document["changed"], symbols, expected.changed) == expected.changed
    assert _named(document["added"], symbols, expected.added) == expected.added
    assert _named(document["removed"], symbols, expected.removed) == expected.removed
    data: dict[str, set[str]] = {"changed": set(), "added": set(), "removed": set()}
    for entry in document["data"]:
        group = "changed" if entry["change"] in ("value-changed", "size-changed") else entry["change"]
        data[group].add(entry["name"])
    wanted = {
        "changed": set(expected.data_changed),
        "added": set(expected.data_added),
        "removed": set(expected.data_removed),
    }
    if variant == "stripped":
        # Without a symbol table only exported (.dynsym) objects have names; the bytes of others are
        # reported by section offset (`.data+0x28`, or `.data` when the section changed size): each
        # must lie in (or, for a section, hold) an expected object of the symbols twin, and no expected
        # change of a variable may go unreported.
        twin = _data_symbols(sample.symbols_twin("baseline", flavour))
        sections = _section_addresses(sample.binary("baseline", flavour))
        for group, names in data.items():
            named = {n for n in names if not n.startswith(".")}
            for region in names - named:
                section, _, offset = region.partition("+")
                if offset:
                    address = sections[section] + int(offset, 16)
                    owners = {n for n, (start, size, _) in twin.items() if start <= address < start + size}
                else:
                    owners = {n for n, (_, _, where) in twin.items() if where == section}
                assert owners & wanted[group], (region, owners)
                named |= owners & wanted[group]
            assert named <= wanted[group], group
        assert bool(data["changed"]) == bool(wanted["changed"])
    else:
        assert data == wanted
