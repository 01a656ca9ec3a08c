"""`hpkg build` of the PE samples: each pair reaches the verdict its sample.toml states, and a package's
patch sites, pre-images, function digests and imports agree with binutils' view of the baseline
(`x86_64-w64-mingw32-objdump -d` and `-p`), not with hpkg's own reader.

Packages are built once per session (`pe_packages`, tests/pe/conftest.py) and shared with
tests/pe/test_pe_apply_file.py.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pe_corpus import PeSample, load_pe_samples  # noqa: E402

from hpkg.builder.build import build_package  # noqa: E402
from hpkg.errors import EXIT_REFUSED, UnsupportedChange  # noqa: E402
from hpkg.formats import read_package  # noqa: E402
from hpkg.formats.model import PE_FILE_FORMAT, TargetSpace  # noqa: E402

OBJDUMP = "x86_64-w64-mingw32-objdump"
SAMPLES = load_pe_samples()
PATCHABLE = [s for s in SAMPLES if s.expectations["ready"].verdict == "patchable"]
REFUSED = [s for s in SAMPLES if s.expectations["ready"].verdict != "patchable"]
_LABEL = re.compile(r"^([0-9a-f]+) <(.+)>:$")
_INSN = re.compile(r"^\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)")


@cache
def objdump_code(binary: Path) -> tuple[dict[str, int], dict[int, int]]:
    """(label → address, address → byte) of every byte `objdump -d` lists."""
    out = subprocess.run([OBJDUMP, "-d", str(binary)], capture_output=True, text=True, check=True).stdout
    labels: dict[str, int] = {}
    code: dict[int, int] = {}
    for line in out.splitlines():
        if m := _LABEL.match(line):
            labels.setdefault(m.group(2), int(m.group(1), 16))
        elif m := _INSN.match(line):
            start = int(m.group(1), 16)
            for i, byte in enumerate(m.group(2).split()):
                code[start + i] = int(byte, 16)
    return labels, code


@cache
def objdump_imports(binary: Path) -> tuple[int, frozenset[str]]:
    """(ImageBase, every `dll!name` of the import tables) as `objdump -p` prints them."""
    out = subprocess.run([OBJDUMP, "-p", str(binary)], capture_output=True, text=True, check=True).stdout
    base = int(re.search(r"^ImageBase\s+([0-9a-f]+)$", out, re.M).group(1), 16)
    names, dll = set(), None
    for line in out.splitlines():
        if m := re.match(r"^\tDLL Name: (\S+)$", line):
            dll = m.group(1).lower()
        elif dll and (m := re.match(r"^\t[0-9a-f]+\s+\d+\s+(\S+)$", line)):
            names.add(f"{dll}!{m.group(1)}")
        elif not line.strip():
            dll = None
    return base, frozenset(names)


@pytest.mark.parametrize("sample", PATCHABLE, ids=lambda s: s.name)
def test_a_patchable_pe_pair_builds_a_package_that_objdump_confirms(pe_packages, sample: PeSample) -> None:
    package = read_package(pe_packages[sample.name].read_bytes()).package
    baseline = sample.binary("baseline", "ready")
    image_base, baseline_imports = objdump_imports(baseline)
    labels, code = objdump_code(baseline)
    assert package.target.file_format == PE_FILE_FORMAT and package.target.image_base == image_base
    assert {f.name for f in package.functions} == set(sample.expectations["ready"].changed)
    assert {f.name for f in package.added_functions} == set(sample.expectations["ready"].added)
    for f in package.functions:
        address = image_base + f.baseline_address  # an RVA in the package
        assert labels[f.name] == address
        listed = bytes(code[address + i] for i in range(f.baseline_size))
        assert f.pre_image == listed[: len(f.pre_image)] and len(f.pre_image) == 5
        assert hashlib.sha256(listed).digest() == f.baseline_sha256
    # Every import is a DLL function the baseline or the fix imports (objdump's import tables).
    _, fix_imports = objdump_imports(sample.binary("fixed", "ready"))
    assert {m.name for m in package.imports} <= baseline_imports | fix_imports
    assert all(m.version is None for m in package.imports)
    # Baseline references are RVAs inside the image.
    assert all(
        0 <= r.target < package.target.image_size
        for r in package.relocations
        if r.space is TargetSpace.BASELINE
    )


def test_a_new_import_is_named_by_dll_and_function(pe_packages) -> None:
    package = read_package(pe_packages["04-new-helper"].read_bytes()).package
    _, baseline_imports = objdump_imports(
        next(s for s in SAMPLES if s.name == "04-new-helper").binary("baseline", "ready")
    )
    assert [m.name for m in package.imports] == ["msvcrt.dll!strchr"]
    assert "msvcrt.dll!strchr" not in baseline_imports


def test_package_code_that_uses_the_stack_carries_its_pdata(pe_packages) -> None:
    from hpkg.pe.package_unwind import decode_package_pdata

    package = read_package(pe_packages["04-new-helper"].read_bytes()).package
    entries = decode_package_pdata(package.unwind, len(package.code))
    handle = next(f for f in package.functions if f.name == "handle")
    assert any(
        e.begin == handle.code_offset and e.end == handle.code_offset + handle.code_size for e in entries
    )


@pytest.mark.parametrize("sample", REFUSED, ids=lambda s: s.name)
def test_a_refused_pe_pair_names_its_reason_and_writes_nothing(pe_corpus, sample: PeSample, tmp_path) -> None:
    output = tmp_path / "fix.hpkg"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpkg",
            "build",
            str(sample.binary("baseline", "ready")),
            str(sample.binary("fixed", "ready")),
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == EXIT_REFUSED, run.stderr
    assert run.stderr.startswith("error: not hot-patchable") and "Traceback" not in run.stderr
    for subject in sample.expectations["ready"].refusal_reason:
        assert f"'{subject}'" in run.stderr
    assert not output.exists()
    with pytest.raises(UnsupportedChange):
        build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))


def test_a_stripped_pe_pair_builds_the_same_sites(pe_corpus, pe_packages) -> None:
    sample = next(s for s in SAMPLES if s.name == "01-bounds-check")
    stripped = build_package(
        sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    ).package
    ready = read_package(pe_packages[sample.name].read_bytes()).package
    assert [(f.baseline_address, f.pre_image) for f in stripped.functions] == [
        (f.baseline_address, f.pre_image) for f in ready.functions
    ]
    assert stripped.target.build_id == ready.target.build_id  # strip keeps the CodeView record


def test_inspect_shows_a_pe_baseline_by_identity_image_base_and_rvas(pe_packages) -> None:
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from json_contract import check_document

    path = str(pe_packages["01-bounds-check"])
    text = subprocess.run([sys.executable, "-m", "hpkg", "inspect", path], capture_output=True, text=True)
    assert text.returncode == 0
    assert "pe32+, identity " in text.stdout and "image base 0x140000000" in text.stdout
    assert re.search(r"rva 0x[0-9a-f]+ \(0x1400[0-9a-f]+\)  read_slot", text.stdout)
    as_json = subprocess.run(
        [sys.executable, "-m", "hpkg", "inspect", path, "--json"], capture_output=True, text=True
    )
    document = json.loads(as_json.stdout)
    check_document(document, "inspect")
    assert document["format_version"] == "1.4" and document["target"]["image_base"] == 0x140000000
