"""`hpkg apply --file` of a PE package: the patched .exe runs under Wine (the session's one prefix) and
answers every step like the fixed build; its exception directory covers the package code; a file
that is not the package's baseline is refused (exit 4) and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from json_contract import check_document, check_error_document  # noqa: E402
from pe_corpus import PeSample, WineConversation, load_pe_samples, wine_environment  # noqa: E402
from sample_corpus import Launch  # noqa: E402

from hpkg.errors import EXIT_INVALID, EXIT_NOT_YET_SUPPORTED, EXIT_REFUSED  # noqa: E402
from hpkg.formats import read_package  # noqa: E402
from hpkg.loader.pe_file import PeFile  # noqa: E402
from hpkg.pe.constants import (  # noqa: E402
    IMAGE_DIRECTORY_ENTRY_EXCEPTION,
    IMAGE_DIRECTORY_ENTRY_IMPORT,
    IMAGE_DIRECTORY_ENTRY_SECURITY,
)
from hpkg.pe.imports import import_slots  # noqa: E402
from hpkg.pe.package_unwind import decode_package_pdata  # noqa: E402
from hpkg.pe.pdata import runtime_functions  # noqa: E402

SAMPLES = {s.name: s for s in load_pe_samples()}
PATCHABLE = [s for s in SAMPLES.values() if s.expectations["ready"].verdict == "patchable"]


def _hpkg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpkg", *args], capture_output=True, text=True)


def _apply(package: Path, binary: Path, output: Path) -> subprocess.CompletedProcess:
    return _hpkg("apply", str(package), "--allow-unsigned", "--file", str(binary), "-o", str(output))


class _PatchedRun:
    """A sample whose process is the patched copy: everything else (kind, banner) is the sample's."""

    def __init__(self, sample: PeSample, path: Path) -> None:
        self._sample, self._path = sample, path

    def __getattr__(self, name: str):
        return getattr(self._sample, name)

    def launch(self, build: str, flavour: str) -> Launch:
        return Launch(("wine", str(self._path), *self._sample.server_args), wine_environment())


@pytest.mark.parametrize("sample", PATCHABLE, ids=lambda s: s.name)
def test_the_patched_exe_answers_like_the_fixed_build_under_wine(
    pe_packages, sample: PeSample, tmp_path
) -> None:
    output = tmp_path / "patched.exe"
    run = _apply(pe_packages[sample.name], sample.binary("baseline", "ready"), output)
    assert run.returncode == 0, run.stderr
    with WineConversation(_PatchedRun(sample, output), "patched", "ready") as conversation:  # type: ignore[arg-type]
        answers = [conversation.ask(step.request) for step in sample.steps]
    assert answers == sample.answers("fixed")
    assert answers != sample.answers("baseline")
    listed = _hpkg("inspect", str(output))
    assert (
        listed.returncode == 0
        and read_package(pe_packages[sample.name].read_bytes()).package.identity.package_id in listed.stdout
    )


def test_package_code_gets_exception_entries_and_new_imports_a_descriptor(pe_packages, tmp_path) -> None:
    sample = SAMPLES["04-new-helper"]
    output = tmp_path / "patched.exe"
    run = _hpkg(
        "apply",
        str(pe_packages[sample.name]),
        "--allow-unsigned",
        "--file",
        str(sample.binary("baseline", "ready")),
        "-o",
        str(output),
        "--json",
    )
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    check_document(document, "apply")
    assert document["bound_imports"] == ["msvcrt.dll!strchr"] and document["changed"] is True
    package = read_package(pe_packages[sample.name].read_bytes()).package
    patched, baseline = PeFile.open(output), PeFile.open(sample.binary("baseline", "ready"))
    entries = runtime_functions(patched.read_rva, *patched.headers.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION))
    begins = [e.begin for e in entries]
    assert begins == sorted(begins)
    code = next(s for s in patched.headers.sections if s.name == ".hpkgtx")
    carried = decode_package_pdata(package.unwind, len(package.code))
    assert carried
    for entry in carried:  # each package entry, moved to the new section, with its UNWIND_INFO bytes
        moved = next(e for e in entries if e.begin == code.virtual_address + entry.begin)
        assert moved.end == code.virtual_address + entry.end
        assert patched.read(moved.unwind, 4) == package.unwind[entry.unwind : entry.unwind + 4]
    # The baseline's entries are all still there.
    old = runtime_functions(baseline.read_rva, *baseline.headers.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION))
    assert set(old) <= set(entries)
    # strchr, which the baseline never imported, has a slot now; the baseline's slots stayed where they were.
    slots = {
        s.name: s.slot
        for s in import_slots(
            patched.read_rva, *patched.headers.directory(IMAGE_DIRECTORY_ENTRY_IMPORT), "patched"
        )
    }
    assert "msvcrt.dll!strchr" in slots
    assert all(slots[name] == slot for name, slot in baseline.import_slots().items())
    assert patched.build_id == baseline.build_id


@pytest.mark.parametrize("other", ["fixed build", "another program", "a changed site", "truncated"])
def test_a_file_that_is_not_the_baseline_is_refused_and_left_unchanged(
    pe_packages, other: str, tmp_path
) -> None:
    sample = SAMPLES["01-bounds-check"]
    target = tmp_path / "target.exe"
    if other == "fixed build":
        shutil.copyfile(sample.binary("fixed", "ready"), target)
    elif other == "another program":
        shutil.copyfile(SAMPLES["08-jump-table"].binary("baseline", "ready"), target)
    elif other == "truncated":  # identity and sites intact, the last sections' bytes gone
        data = sample.binary("baseline", "ready").read_bytes()
        target.write_bytes(data[: len(data) * 3 // 4])
    else:  # the baseline, its identity intact, with one byte of the replaced function's entry changed
        shutil.copyfile(sample.binary("baseline", "ready"), target)
        pe = PeFile.open(target)
        site = read_package(pe_packages[sample.name].read_bytes()).package.functions[0].baseline_address
        raw = bytearray(target.read_bytes())
        raw[pe.headers.rva_to_offset(site)] ^= 0xFF
        target.write_bytes(raw)
    before = hashlib.sha256(target.read_bytes()).digest()
    output = tmp_path / "out.exe"
    run = _apply(pe_packages[sample.name], target, output)
    assert run.returncode == (EXIT_INVALID if other == "truncated" else EXIT_REFUSED), run.stderr
    assert run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert not output.exists()
    assert hashlib.sha256(target.read_bytes()).digest() == before


def test_applying_again_changes_nothing_and_another_package_is_refused(pe_packages, tmp_path) -> None:
    sample = SAMPLES["01-bounds-check"]
    once = tmp_path / "once.exe"
    assert _apply(pe_packages[sample.name], sample.binary("baseline", "ready"), once).returncode == 0
    again = _hpkg(
        "apply",
        str(pe_packages[sample.name]),
        "--allow-unsigned",
        "--file",
        str(once),
        "-o",
        str(tmp_path / "again.exe"),
        "--json",
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False
    check_document(json.loads(again.stdout), "apply")
    assert (tmp_path / "again.exe").read_bytes() == once.read_bytes()
    other = _apply(pe_packages["08-jump-table"], once, tmp_path / "other.exe")
    assert other.returncode == EXIT_REFUSED and not (tmp_path / "other.exe").exists()


@pytest.mark.parametrize("target", [("--pid", str(os.getpid())), ("--all",)], ids=["pid", "all"])
def test_a_live_apply_of_a_pe_package_is_not_supported_yet(pe_packages, target) -> None:
    package = str(pe_packages["01-bounds-check"])
    run = _hpkg("apply", package, "--allow-unsigned", *target)
    assert run.returncode == EXIT_NOT_YET_SUPPORTED
    assert [
        line for line in run.stderr.splitlines() if line.startswith("error: ")
    ] == run.stderr.splitlines()[-1:]
    assert "apply --file" in run.stderr and "Traceback" not in run.stderr
    as_json = _hpkg("apply", package, "--allow-unsigned", *target, "--json")
    check_error_document(as_json.stdout, "apply", EXIT_NOT_YET_SUPPORTED, "not-yet-supported")


PROGRAMS = Path(__file__).resolve().parent / "programs"


def _wine_answer(binary: Path, request: str) -> str:
    run = subprocess.run(
        ["wine", str(binary)],
        input=request + "\n",
        capture_output=True,
        text=True,
        env={**os.environ, **wine_environment()},
        timeout=120,
        cwd=binary.parent,
    )
    return run.stdout.replace("\r", "").strip()


def _mingw(output: Path, *arguments: str) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    command = ["x86_64-w64-mingw32-gcc", "-O2", *arguments, "-o", str(output)]
    subprocess.run(command, check=True, capture_output=True)
    return output


def test_the_windows_unwinder_walks_through_package_code(pe_corpus, tmp_path) -> None:
    binaries = {}
    for build, flags in (("baseline", ()), ("fixed", ("-DFIX",))):
        binaries[build] = tmp_path / f"{build}.exe"
        subprocess.run(
            [
                "x86_64-w64-mingw32-gcc",
                "-O2",
                "-Wl,--build-id",
                *flags,
                str(PROGRAMS / "stack_walk.c"),
                "-o",
                str(binaries[build]),
            ],
            check=True,
            capture_output=True,
        )
    package = tmp_path / "walk.hpkg"
    built = _hpkg("build", str(binaries["baseline"]), str(binaries["fixed"]), "-o", str(package))
    assert built.returncode == 0, built.stderr
    patched = tmp_path / "patched.exe"
    assert _apply(package, binaries["baseline"], patched).returncode == 0
    # frames_to_main() → work() (package code) → main: two frames up, as in the fixed build.
    assert _wine_answer(binaries["fixed"], "7") == "2005"
    assert _wine_answer(patched, "7") == "2005"


def test_a_rebased_dll_finds_the_package_pointers_through_new_base_relocations(pe_corpus, tmp_path) -> None:
    library = ("-shared", "-Wl,--build-id", "-Wl,--image-base,0x6f000000", str(PROGRAMS / "rebased_lib.c"))
    baseline = _mingw(tmp_path / "baseline" / "lib.dll", *library)
    fixed = _mingw(tmp_path / "fixed" / "lib.dll", "-DFIX", *library)
    package = tmp_path / "lib.hpkg"
    assert _hpkg("build", str(baseline), str(fixed), "-o", str(package)).returncode == 0
    patched = tmp_path / "patched" / "lib.dll"
    patched.parent.mkdir()
    run = _hpkg(
        "apply", str(package), "--allow-unsigned", "--file", str(baseline), "-o", str(patched), "--json"
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["relative_relocations"] == 4  # the four words of the new table
    for directory in ("fixed", "patched"):
        _mingw(tmp_path / directory / "host.exe", str(PROGRAMS / "rebased_host.c"))
    fixed_answer = _wine_answer(tmp_path / "fixed" / "host.exe", "2\n9")
    assert fixed_answer == "base moved\nTWO\nout of range"
    assert _wine_answer(tmp_path / "patched" / "host.exe", "2\n9") == fixed_answer


@pytest.mark.parametrize("damage", ["cut short", "entry outside the code", "a handler flag"])
def test_a_damaged_pe_unwind_section_is_invalid_input(pe_packages, damage: str, tmp_path) -> None:
    from dataclasses import replace

    from hpkg.formats import write_package

    sample = SAMPLES["14-threaded-server"]
    package = read_package(pe_packages[sample.name].read_bytes()).package
    unwind = bytearray(package.unwind)
    if damage == "cut short":
        unwind = unwind[:-2]
    elif damage == "entry outside the code":
        unwind[8:12] = (len(package.code) + 1).to_bytes(4, "little")  # EndAddress of the first entry
    else:
        first = int.from_bytes(unwind[12:16], "little")  # UnwindData of the first entry
        unwind[first] |= 1 << 3  # UNW_FLAG_EHANDLER
    damaged = tmp_path / "damaged.hpkg"
    damaged.write_bytes(write_package(replace(package, unwind=bytes(unwind))))
    output = tmp_path / "out.exe"
    run = _apply(damaged, sample.binary("baseline", "ready"), output)
    assert run.returncode == 3, run.stderr
    assert "PE unwind section" in run.stderr and "Traceback" not in run.stderr
    assert not output.exists()


def test_an_authenticode_signature_that_no_longer_matches_is_dropped(pe_packages, tmp_path) -> None:
    sample = SAMPLES["01-bounds-check"]
    key, certificate, signed = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "signed.exe"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
            "-days",
            "2",
            "-subj",
            "/CN=hpkg test",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "osslsigncode",
            "sign",
            "-certs",
            str(certificate),
            "-key",
            str(key),
            "-in",
            str(sample.binary("baseline", "ready")),
            "-out",
            str(signed),
        ],
        check=True,
        capture_output=True,
    )
    assert PeFile.open(signed).headers.directory(IMAGE_DIRECTORY_ENTRY_SECURITY) != (0, 0)
    output = tmp_path / "patched.exe"
    run = _apply(pe_packages[sample.name], signed, output)
    assert run.returncode == 0, run.stderr
    assert "Authenticode signature was dropped" in run.stdout
    assert PeFile.open(output).headers.directory(IMAGE_DIRECTORY_ENTRY_SECURITY) == (0, 0)
    verified = subprocess.run(["osslsigncode", "verify", str(output)], capture_output=True, text=True)
    assert "No signature found" in verified.stdout + verified.stderr


def test_a_file_without_codeview_is_patched_once_and_then_carries_the_package(pe_corpus, tmp_path) -> None:
    """Without a CodeView record the identity is the fallback rule's, which patching changes (the
    headers do): the record and the jumps still say the file carries the package."""
    source = PROGRAMS / "stack_walk.c"
    baseline = _mingw(tmp_path / "baseline.exe", str(source))
    fixed = _mingw(tmp_path / "fixed.exe", "-DFIX", str(source))
    package = tmp_path / "walk.hpkg"
    assert _hpkg("build", str(baseline), str(fixed), "-o", str(package)).returncode == 0
    once, twice = tmp_path / "once.exe", tmp_path / "twice.exe"
    assert _apply(package, baseline, once).returncode == 0
    assert PeFile.open(once).build_id != PeFile.open(baseline).build_id
    again = _hpkg("apply", str(package), "--allow-unsigned", "--file", str(once), "-o", str(twice), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False and twice.read_bytes() == once.read_bytes()
