"""The PE32+ backend reads mingw-w64 builds into the same Image as ELF: identity, functions, imports,
and one `error:` line with a documented exit code for what it cannot read or build."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from objdump_pe_diff import OBJDUMP  # noqa: E402
from pe_corpus import load_pe_samples  # noqa: E402
from sample_corpus import SAMPLES_DIR, build_corpus  # noqa: E402

from hpkg.builder.diff import diff_images  # noqa: E402
from hpkg.builder.functions import discover_functions  # noqa: E402
from hpkg.builder.image import load_image  # noqa: E402
from hpkg.builder.model import Status, TargetKind  # noqa: E402

PROGRAMS = Path(__file__).resolve().parent / "programs"
CC = "x86_64-w64-mingw32-gcc"
EXIT_INVALID, EXIT_REFUSED = 3, 4
BOUNDS = next(s for s in load_pe_samples() if s.name == "01-bounds-check")


def _objdump_p(path: Path) -> str:
    return subprocess.run([OBJDUMP, "-p", str(path)], capture_output=True, text=True, check=True).stdout


def _compile(source: Path, output: Path, *flags: str) -> Path:
    subprocess.run([CC, "-O2", *flags, str(source), "-o", str(output)], check=True, capture_output=True)
    return output


@pytest.fixture(scope="module")
def import_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("imports")
    source = PROGRAMS / "imports.c"
    return (
        _compile(source, root / "baseline.exe", "-Wl,--build-id"),
        _compile(source, root / "fixed.exe", "-DFIX", "-Wl,--build-id"),
    )


def test_the_identity_is_the_codeview_guid_and_age(pe_corpus) -> None:
    """objdump prints the RSDS GUID in its display order (first three fields big-endian)."""
    dump = _objdump_p(BOUNDS.binary("baseline", "ready"))
    m = re.search(r"format RSDS signature ([0-9a-f]{32}) age (\d+)", dump)
    assert m is not None
    shown = bytes.fromhex(m.group(1))
    guid = shown[3::-1] + shown[5:3:-1] + shown[7:5:-1] + shown[8:]  # back to the stored byte order
    image = load_image(BOUNDS.binary("baseline", "ready"))
    assert image.build_id == (guid + struct.pack("<I", int(m.group(2)))).hex()
    assert image.kind == "pe-executable" and image.machine == "x86-64"


def test_strip_keeps_the_identity_and_the_functions(pe_corpus) -> None:
    full = load_image(BOUNDS.binary("baseline", "ready"))
    stripped = load_image(BOUNDS.binary("baseline", "stripped"))
    assert stripped.build_id == full.build_id != load_image(BOUNDS.binary("fixed", "ready")).build_id
    assert stripped.stripped and not full.stripped
    named = {f.address: f for f in discover_functions(full)}
    unnamed = {f.address: f for f in discover_functions(stripped)}
    assert unnamed.keys() == named.keys()  # every function is found through .pdata alone
    read_slot = next(f for f in named.values() if f.name == "read_slot")
    assert unnamed[read_slot.address].name == f"sub_{read_slot.address:x}"
    assert unnamed[read_slot.address].size == read_slot.size


def test_without_codeview_the_identity_is_stamp_size_and_header_digest(tmp_path) -> None:
    path = _compile(PROGRAMS / "imports.c", tmp_path / "plain.exe")
    dump = _objdump_p(path)
    assert "RSDS" not in dump
    size_of_image = int(re.search(r"SizeOfImage\s+([0-9a-f]+)", dump).group(1), 16)
    size_of_headers = int(re.search(r"SizeOfHeaders\s+([0-9a-f]+)", dump).group(1), 16)
    data = bytearray(path.read_bytes())
    pe_offset = struct.unpack_from("<I", data, 0x3C)[0]
    (stamp,) = struct.unpack_from("<I", data, pe_offset + 8)  # IMAGE_FILE_HEADER.TimeDateStamp
    image_base = pe_offset + 4 + 20 + 24  # PE signature, IMAGE_FILE_HEADER, then ImageBase's offset
    assert (
        int(re.search(r"ImageBase\s+([0-9a-f]+)", dump).group(1), 16)
        == struct.unpack_from("<Q", data, image_base)[0]
    )
    data[image_base : image_base + 8] = bytes(8)  # a rebasing loader may write the actual base there
    expected = struct.pack("<II", stamp, size_of_image) + hashlib.sha256(data[:size_of_headers]).digest()[:12]
    assert load_image(path).build_id == expected.hex()


def test_a_switched_import_is_a_change_and_a_shifted_one_is_not(import_pair) -> None:
    old, new = (load_image(p) for p in import_pair)
    result = diff_images(old, new)
    assert {p.name for p in result.changed} == {"parse", "stamp"}
    assert not result.added and not result.removed
    assert result.pair("unchanged").status is Status.SAME

    def imports_of(name: str, side: str) -> set[str]:
        canonical = getattr(result.pair(name), side)
        references = canonical.table.finder(canonical.function)
        return {r.target.name for r in references if r.target.kind is TargetKind.IMPORT}

    assert imports_of("parse", "old") == {"msvcrt.dll!atoi"}
    assert imports_of("parse", "new") == {"msvcrt.dll!atol"}
    assert imports_of("stamp", "old") == {"kernel32.dll!GetTickCount"}
    assert imports_of("stamp", "new") == {"kernel32.dll!GetCurrentProcessId"}
    assert imports_of("unchanged", "old") == {"msvcrt.dll!strlen", "kernel32.dll!GetCurrentThreadId"}


def _hpkg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpkg", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:0x200], "truncated"),  # the headers end inside the section table
        (lambda d: d[:0x3C] + struct.pack("<I", 0x10000) + d[0x40:], "without a PE header"),
        (lambda d: _set_machine(d, 0x14C), "unsupported architecture i386"),
        (lambda d: _set_machine(d, 0xAA64), "unsupported architecture aarch64"),
    ],
    ids=["truncated", "no-pe-header", "i386", "arm64"],
)
def test_a_damaged_or_foreign_pe_is_one_error_line(pe_corpus, tmp_path, damage, message) -> None:
    bad = tmp_path / "bad.exe"
    bad.write_bytes(damage(BOUNDS.binary("baseline", "ready").read_bytes()))
    run = _hpkg("diff", str(bad), str(BOUNDS.binary("fixed", "ready")))
    assert run.returncode == EXIT_INVALID, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ") and message in run.stderr


def _set_machine(data: bytes, machine: int) -> bytes:
    at = struct.unpack_from("<I", data, 0x3C)[0] + 4
    return data[:at] + struct.pack("<H", machine) + data[at + 2 :]


def test_a_stripped_dll_is_named_by_its_exports(tmp_path) -> None:
    source = PROGRAMS / "library.c"
    old = load_image(_compile(source, tmp_path / "old.dll", "-shared", "-s", "-Wl,--build-id"))
    new = load_image(_compile(source, tmp_path / "new.dll", "-shared", "-s", "-DFIX", "-Wl,--build-id"))
    assert old.kind == new.kind == "pe-library"
    result = diff_images(old, new)
    assert [p.name for p in result.changed] == ["lib_limit"]
    assert result.pair("lib_twice").status is Status.SAME


@pytest.mark.parametrize(
    ("command", "exit_code"),
    [
        ("diff {elf_old} {pe_new}", EXIT_INVALID),
        ("verify {package} --allow-unsigned --against {pe_old}", EXIT_REFUSED),
        ("apply {package} --allow-unsigned --file {pe_old} -o {out}", EXIT_REFUSED),
    ],
    ids=["diff-elf-with-pe", "verify-against-pe", "apply-file-to-pe"],
)
def test_pe_files_where_only_elf_goes_are_one_error_line(pe_corpus, tmp_path, command, exit_code) -> None:
    """An ELF pair never meets a PE file quietly (the diff says what it got: exit 3), nor an ELF package
    a PE file (the file is not its baseline: exit 4, nothing written)."""
    build_corpus()  # the ELF samples, under the corpus's build lock
    elf = SAMPLES_DIR / "01-bounds-check" / "out"
    package = tmp_path / "elf.hpkg"
    if "{package}" in command:
        built = _hpkg("build", str(elf / "baseline"), str(elf / "fixed"), "-o", str(package))
        assert built.returncode == 0, built.stderr
    args = command.format(
        elf_old=elf / "baseline",
        pe_old=BOUNDS.binary("baseline", "ready"),
        pe_new=BOUNDS.binary("fixed", "ready"),
        package=package,
        out=tmp_path / "patched.exe",
    ).split()
    run = _hpkg(*args)
    assert run.returncode == exit_code, run.stderr
    assert run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert not (tmp_path / "patched.exe").exists()


def test_chained_pdata_entries_are_parts_of_their_primary_function(tmp_path) -> None:
    """An adjacent chained entry extends its primary; a distant one is the primary's `.cold` part."""
    sources = (str(PROGRAMS / "chained_main.c"), str(PROGRAMS / "chained.S"))
    built = {}
    for build, flags in (("baseline", ()), ("fixed", ("-DFIX",))):
        path = tmp_path / f"{build}.exe"
        subprocess.run([CC, "-O2", *flags, *sources, "-o", str(path)], check=True, capture_output=True)
        built[build] = load_image(path)
    functions = {f.name: f for f in discover_functions(built["baseline"])}
    symbols = _symbol_addresses(tmp_path / "baseline.exe")
    entry, cold = functions["split_entry"], functions["split_entry.cold"]
    # split_entry's primary entry and its adjacent chained entry: one function, up to `other`'s padding.
    assert entry.address == symbols["split_entry"] and entry.end == symbols["split_end"]
    assert cold.address == symbols["far_part"] and cold.end == symbols["far_end"]
    assert cold.parent == "split_entry" and "other" in functions
    result = diff_images(built["baseline"], built["fixed"])
    assert [p.name for p in result.changed] == ["split_entry.cold"]


def _symbol_addresses(path: Path) -> dict[str, int]:
    """Symbol → link address, from binutils' nm (labels of the assembly file included)."""
    out = subprocess.run(
        ["x86_64-w64-mingw32-nm", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return {f[2]: int(f[0], 16) for f in (line.split() for line in out.splitlines()) if len(f) == 3}
