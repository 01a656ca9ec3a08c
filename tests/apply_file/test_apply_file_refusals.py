"""`hpkg apply --file` and `hpkg verify --against` refuse what is not the package's baseline or not trusted.

Exit codes: 2 usage, 3 a package that is tampered, unsigned or signed by another key (or a BINARY that
is not an ELF file), 4 a BINARY that is not the baseline (another build, changed patch-site or function
bytes, already patched), 6 an OUT that cannot be written. Nothing is written when apply refuses.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from apply_file_helpers import Keys, Packages, run_hpkg
from sample_corpus import load_samples

from hpkg.formats import read_package

BY_NAME = {s.name: s for s in load_samples()}
TWO_FUNCTIONS = BY_NAME["18-two-functions"]
OTHER = BY_NAME["01-bounds-check"]


def _symbol(binary: Path, name: str) -> int:
    """Link address of a function from nm (independent of hpkg)."""
    out = subprocess.run(["nm", "--defined-only", str(binary)], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        address, _, symbol = line.split()
        if symbol == name:
            return int(address, 16)
    raise KeyError(name)


def _file_offset(binary: Path, address: int) -> int:
    """File offset of a link address in .text, from readelf's section table (independent of hpkg)."""
    out = subprocess.run(["readelf", "-SW", str(binary)], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if " .text " in line:
            fields = line.split("]", 1)[1].split()
            start, offset, size = int(fields[2], 16), int(fields[3], 16), int(fields[4], 16)
            assert start <= address < start + size
            return offset + address - start
    raise AssertionError("no .text")


def _copy_with_flipped_byte(source: Path, destination: Path, address: int) -> Path:
    data = bytearray(source.read_bytes())
    data[_file_offset(source, address)] ^= 0xFF
    destination.write_bytes(bytes(data))
    destination.chmod(0o755)
    return destination


@pytest.fixture(scope="module")
def package(packages: Packages) -> Path:
    return packages.build(TWO_FUNCTIONS, "ready")


def _apply(package: Path, binary: Path, out: Path, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return run_hpkg("apply", package, "--file", binary, "-o", out, *extra)


def test_another_build_is_refused_naming_its_build_id(package: Path, keys: Keys, tmp_path: Path) -> None:
    other = OTHER.binary("baseline", "ready")
    out = tmp_path / "out"

    result = _apply(package, other, out, "--key", keys.public)

    assert result.returncode == 4, result.stderr
    assert "another build" in result.stderr
    build_id = subprocess.run(["readelf", "-n", str(other)], capture_output=True, text=True).stdout
    assert build_id.split("Build ID: ")[1].split()[0] in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("function", ["encode_field", "decode_field"])
def test_a_changed_patch_site_is_refused_naming_the_function(
    package: Path, keys: Keys, tmp_path: Path, function: str
) -> None:
    baseline = TWO_FUNCTIONS.binary("baseline", "ready")
    changed = _copy_with_flipped_byte(baseline, tmp_path / "baseline", _symbol(baseline, function) + 1)
    out = tmp_path / "out"

    result = _apply(package, changed, out, "--key", keys.public)

    assert result.returncode == 4, result.stderr
    assert f"function {function} at" in result.stderr
    assert "differ from the pre-image" in result.stderr
    assert not out.exists()


def test_a_changed_function_body_is_refused_by_its_sha256(package: Path, keys: Keys, tmp_path: Path) -> None:
    baseline = TWO_FUNCTIONS.binary("baseline", "ready")
    inside = _symbol(baseline, "decode_field") + 12  # past the 5-byte patch site, inside the function
    changed = _copy_with_flipped_byte(baseline, tmp_path / "baseline", inside)

    result = _apply(package, changed, tmp_path / "out", "--key", keys.public)

    assert result.returncode == 4, result.stderr
    assert "function decode_field at" in result.stderr and "SHA-256" in result.stderr
    assert "encode_field" not in result.stderr.split("\n", 1)[1]  # the intact function is not blamed


def test_the_same_package_twice_writes_an_unchanged_copy(package: Path, keys: Keys, tmp_path: Path) -> None:
    """Re-running a pipeline step is harmless: a file that carries the package is copied as it is, exit 0,
    reported "already applied" and `changed: false`; `verify --against` says the same."""
    first = tmp_path / "patched"
    applied = _apply(package, TWO_FUNCTIONS.binary("baseline", "ready"), first, "--key", keys.public)
    assert applied.returncode == 0, applied.stderr

    twice = _apply(package, first, tmp_path / "twice", "--key", keys.public, "--json")
    verified = run_hpkg("verify", package, "--key", keys.public, "--against", first)

    assert twice.returncode == 0, twice.stderr
    document = json.loads(twice.stdout)
    package_id = read_package(package.read_bytes()).package.identity.package_id
    assert document["changed"] is False
    assert document["already_applied"] == {"package_id": package_id, "patch_level": 1}
    assert (tmp_path / "twice").read_bytes() == first.read_bytes()
    assert (tmp_path / "twice").stat().st_mode & 0o777 == first.stat().st_mode & 0o777
    assert verified.returncode == 0 and "already applied (apply changes nothing)" in verified.stdout


def test_a_recorded_package_whose_jump_was_redirected_is_refused(
    package: Path, keys: Keys, tmp_path: Path
) -> None:
    """The record alone does not make a file "already applied": every site must still jump into the
    recorded package's code. A redirected jump is refused as a foreign patch, and nothing is written."""
    first = tmp_path / "patched"
    applied = _apply(package, TWO_FUNCTIONS.binary("baseline", "ready"), first, "--key", keys.public)
    assert applied.returncode == 0, applied.stderr
    data = bytearray(first.read_bytes())
    site = _file_offset(first, _symbol(first, "decode_field"))
    assert data[site] == 0xE9  # the package's jmp rel32
    rel32 = int.from_bytes(data[site + 1 : site + 5], "little", signed=True) + 0x100000
    data[site + 1 : site + 5] = rel32.to_bytes(4, "little", signed=True)
    redirected = tmp_path / "redirected"
    redirected.write_bytes(bytes(data))
    out = tmp_path / "out"

    result = _apply(package, redirected, out, "--key", keys.public)

    assert result.returncode == 4, result.stderr
    assert "function decode_field at" in result.stderr and "not into an applied hpkg package" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("where", ["header", "manifest", "payload", "signature"])
def test_a_tampered_package_is_refused(package: Path, keys: Keys, tmp_path: Path, where: str) -> None:
    data = bytearray(package.read_bytes())
    loaded = read_package(bytes(data))  # the part sizes, so the test does not hard-code the layout
    header = loaded.file_size - loaded.manifest_size - loaded.compressed_size - len(loaded.signature or b"")
    offset = {
        "header": header - 8,
        "manifest": header + loaded.manifest_size // 2,
        "payload": header + loaded.manifest_size + loaded.compressed_size // 2,
        "signature": len(data) - 10,
    }[where]
    data[offset] ^= 0x01
    tampered = tmp_path / "tampered.hpkg"
    tampered.write_bytes(bytes(data))
    out = tmp_path / "out"

    result = _apply(tampered, TWO_FUNCTIONS.binary("baseline", "ready"), out, "--key", keys.public)

    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: ")
    assert not out.exists()


def test_an_unsigned_package_needs_allow_unsigned(packages: Packages, keys: Keys, tmp_path: Path) -> None:
    unsigned = packages.build(TWO_FUNCTIONS, "ready", signed=False)
    baseline = TWO_FUNCTIONS.binary("baseline", "ready")

    refused = _apply(unsigned, baseline, tmp_path / "a")
    with_key = _apply(unsigned, baseline, tmp_path / "b", "--key", keys.public)
    allowed = _apply(unsigned, baseline, tmp_path / "c", "--allow-unsigned")

    assert refused.returncode == 3 and "unsigned" in refused.stderr and "--allow-unsigned" in refused.stderr
    assert with_key.returncode == 3 and "not signed" in with_key.stderr
    assert allowed.returncode == 0, allowed.stderr
    assert "unsigned package accepted" in allowed.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_signed_package_needs_its_key(package: Path, tmp_path: Path) -> None:
    baseline = TWO_FUNCTIONS.binary("baseline", "ready")
    other_key = tmp_path / "other"
    assert run_hpkg("keygen", other_key).returncode == 0

    without_key = _apply(package, baseline, tmp_path / "a")
    wrong_key = _apply(package, baseline, tmp_path / "b", "--key", f"{other_key}.pub")

    assert without_key.returncode == 3 and "--key" in without_key.stderr
    assert wrong_key.returncode == 3 and "not by the given key" in wrong_key.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--allow-unsigned", "--key", "k.pub"], "exclude each other"),
        (["--allow-unsigned", "--file", "BINARY"], "-o OUT"),
        (["--allow-unsigned", "-o", "OUT"], "--file BINARY"),
    ],
)
def test_usage_errors(package: Path, arguments: list[str], message: str) -> None:
    result = run_hpkg("apply", package, *arguments)

    assert result.returncode == 2
    assert message in result.stderr


def test_unwritable_output_and_unreadable_binaries(package: Path, keys: Keys, tmp_path: Path) -> None:
    baseline = TWO_FUNCTIONS.binary("baseline", "ready")

    truncated = tmp_path / "truncated"
    truncated.write_bytes(baseline.read_bytes()[:3000])  # headers and build-id intact, code cut off

    unwritable = _apply(package, baseline, tmp_path / "missing-dir" / "out", "--key", keys.public)
    not_elf = _apply(package, package, tmp_path / "out", "--key", keys.public)
    cut = _apply(package, truncated, tmp_path / "out", "--key", keys.public)

    assert unwritable.returncode == 6 and "cannot write" in unwritable.stderr
    assert not_elf.returncode == 3 and "not an ELF file" in not_elf.stderr
    assert cut.returncode == 3 and "truncated" in cut.stderr
    assert not (tmp_path / "out").exists()


def test_verify_against_checks_without_changing_anything(package: Path, keys: Keys, tmp_path: Path) -> None:
    baseline = TWO_FUNCTIONS.binary("baseline", "ready")
    copy = tmp_path / "baseline"
    shutil.copy2(baseline, copy)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()

    good = run_hpkg("verify", package, "--key", keys.public, "--against", copy)
    other = run_hpkg("verify", package, "--key", keys.public, "--against", OTHER.binary("baseline", "ready"))

    assert good.returncode == 0, good.stderr
    for function in ("encode_field", "decode_field", "handle"):
        assert f"patch site {function} at" in good.stdout
    assert "pre-image, SHA-256 ok" in good.stdout
    assert other.returncode == 4 and "another build" in other.stderr
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest


def test_json_names_every_patch_site(package: Path, keys: Keys, tmp_path: Path) -> None:
    baseline = TWO_FUNCTIONS.binary("baseline", "ready")

    result = _apply(package, baseline, tmp_path / "out", "--key", keys.public, "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    sites = {site["function"]: site["link_address"] for site in document["patch_sites"]}
    assert sites == {name: _symbol(baseline, name) for name in ("encode_field", "decode_field", "handle")}
    assert document["position_independent"] is True
    assert document["areas"]["code"]["address"] > max(sites.values())
