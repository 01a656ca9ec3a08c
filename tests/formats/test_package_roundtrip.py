"""Writer → reader round trips, determinism and the writer's refusals, on a package from real gcc output."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from real_package import CHANGED, build_real_package

from hpkg.errors import PackageError
from hpkg.formats import (
    DataObject,
    DataSection,
    ImportRecord,
    Package,
    PackageSection,
    Relocation,
    RelocationKind,
    TargetSpace,
    key_id,
    read_package,
    write_package,
)
from hpkg.formats.header import DIGEST_MINOR, HEADER_SIZE
from hpkg.formats.reloctable import RECORD_SIZE, decode_relocations


def test_real_package_has_real_content(real_package: Package) -> None:
    # Guard against the fixture silently producing an empty package.
    assert [f.name for f in real_package.functions] == list(CHANGED)
    assert {r.space for r in real_package.relocations} >= {TargetSpace.BASELINE, TargetSpace.CODE,
                                                            TargetSpace.IMPORT, TargetSpace.RODATA}
    assert real_package.imports == (ImportRecord("printf", "GLIBC_2.2.5"),)
    assert len(real_package.target.build_id) == 20


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_round_trip_gives_back_the_same_package(real_package: Package, signing_key, signed: bool) -> None:
    key = signing_key if signed else None
    blob = write_package(real_package, key)
    loaded = read_package(blob, signing_key.public_key() if signed else None)
    assert loaded.package == real_package
    # A signed package is 1.0 as before; an unsigned one is 1.3, the first with a package digest.
    assert loaded.format_version == ((1, 0) if signed else (1, DIGEST_MINOR))
    assert loaded.signed is signed
    assert loaded.key_id == (key_id(signing_key.public_key()) if signed else None)
    assert loaded.file_size == len(blob)


def test_loaded_facts_match_the_sections(real_package: Package, signing_key) -> None:
    loaded = read_package(write_package(real_package, signing_key))
    assert loaded.section_digests["code"] == hashlib.sha256(real_package.code).digest()
    assert loaded.section_digests["rodata"] == hashlib.sha256(real_package.rodata).digest()
    assert loaded.section_digests["data"] == hashlib.sha256(real_package.data).digest()
    sections = (real_package.code, real_package.rodata, real_package.data)
    relocation_bytes = len(real_package.relocations) * RECORD_SIZE
    assert loaded.payload_size == sum(map(len, sections)) + relocation_bytes
    assert loaded.compressed_size < loaded.payload_size


def test_relocation_table_is_fixed_binary_records(real_package: Package) -> None:
    blob = write_package(real_package)
    loaded = read_package(blob)
    start = HEADER_SIZE + loaded.manifest_size
    frame = blob[start : start + loaded.compressed_size]
    payload = zstandard.ZstdDecompressor().decompress(frame)
    table = payload[len(payload) - len(real_package.relocations) * RECORD_SIZE :]
    assert decode_relocations(table) == real_package.relocations
    assert table[:1] == bytes([PackageSection.CODE])  # a record starts with its section, not with JSON


def test_two_writes_are_byte_identical(programs, signing_key) -> None:
    # Build the package twice from the binaries, so nothing is shared between the two writes.
    first = write_package(build_real_package(*programs), signing_key)
    second = write_package(build_real_package(*programs), signing_key)
    assert first == second
    assert write_package(build_real_package(*programs)) == write_package(build_real_package(*programs))


def test_writes_in_separate_processes_are_byte_identical(programs, tmp_path: Path) -> None:
    # Different hash seeds change set and dict iteration in Python: the bytes must not depend on them.
    # The key comes from the CLI, as a release engineer's would (no CLI command writes packages yet).
    key = tmp_path / "key"
    subprocess.run([sys.executable, "-m", "hpkg", "keygen", str(key)], check=True, capture_output=True)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from real_package import build_real_package;"
        "from hpkg.formats import write_package, load_private_key;"
        "pkg = build_real_package(Path(sys.argv[2]), Path(sys.argv[3]));"
        "sys.stdout.buffer.write(write_package(pkg, load_private_key(sys.argv[4])))"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", script, str(Path(__file__).parent), *map(str, programs), str(key)],
            capture_output=True, env=env, check=True,
        )
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]
    assert read_package(outputs[0]).signed


def test_signature_is_deterministic_per_key(real_package: Package, signing_key, other_key) -> None:
    assert write_package(real_package, signing_key) == write_package(real_package, signing_key)
    assert write_package(real_package, signing_key) != write_package(real_package, other_key)


def test_package_with_bss_and_no_relocations_round_trips(real_package: Package) -> None:
    pkg = dataclasses.replace(
        real_package,
        relocations=(),
        imports=(),
        bss_size=4096,
        data_objects=(DataObject("history", DataSection.BSS, 64, 256),),
    )
    assert read_package(write_package(pkg)).package == pkg


def _replace_function(pkg: Package, **changes) -> Package:
    first = dataclasses.replace(pkg.functions[0], **changes)
    return dataclasses.replace(pkg, functions=(first,) + pkg.functions[1:])


def _add_relocation(pkg: Package, relocation: Relocation) -> Package:
    return dataclasses.replace(pkg, relocations=pkg.relocations + (relocation,))


def _shifted(relocation: Relocation, by: int) -> Relocation:
    return dataclasses.replace(relocation, offset=relocation.offset + by)


def _replace(pkg: Package, field: str, **changes) -> Package:
    return dataclasses.replace(pkg, **{field: dataclasses.replace(getattr(pkg, field), **changes)})


PC32, R64, CODE = RelocationKind.R_X86_64_PC32, RelocationKind.R_X86_64_64, TargetSpace.CODE


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: _replace_function(p, pre_image=b"\x90" * 6, baseline_size=5), "pre_image"),
        (lambda p: _replace_function(p, code_offset=len(p.code)), "outside a section"),
        (lambda p: _replace_function(p, baseline_sha256=b"\x00" * 31), "baseline_sha256"),
        (lambda p: _replace_function(p, baseline_address=p.functions[1].baseline_address + 2), "overlap"),
        (lambda p: _add_relocation(p, Relocation(PackageSection.CODE, len(p.code) - 2, PC32, CODE, 0, 0)),
         "outside a section"),
        (lambda p: _add_relocation(p, Relocation(PackageSection.DATA, 0, R64, TargetSpace.IMPORT, 7, 0)),
         "import index"),
        (lambda p: _add_relocation(p, _shifted(p.relocations[0], 1)), "overlapping"),
        (lambda p: dataclasses.replace(p, data_objects=(DataObject("x", DataSection.BSS, 0, 8),)), "in bss"),
        (lambda p: _replace(p, "identity", patch_level=0), "patch_level"),
        (lambda p: _replace(p, "target", machine="aarch64"), "machine"),
        (lambda p: _replace(p, "target", build_id=b""), "build_id"),
        (lambda p: _replace_function(p, name="evil\x1b[2Jname"), "control"),
    ],
    ids=[
        "pre-image-longer-than-function", "code-outside-section", "short-digest", "overlapping-patch-sites",
        "relocation-past-end", "import-index-out-of-range", "relocations-overlap", "data-object-outside-bss",
        "patch-level-zero", "unsupported-machine", "empty-build-id", "control-characters-in-name",
    ],
)
def test_writer_refuses_an_inconsistent_package(real_package: Package, change, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        write_package(change(real_package))


def test_raw_seed_and_pem_keys_give_the_same_signature(real_package: Package, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from hpkg.formats import load_private_key

    seed = bytes(range(100, 132))
    key = Ed25519PrivateKey.from_private_bytes(seed)
    (tmp_path / "raw").write_bytes(seed)
    (tmp_path / "raw").chmod(0o600)  # a private key readable by others is refused
    (tmp_path / "pem").touch(0o600)
    (tmp_path / "pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    raw = write_package(real_package, load_private_key(tmp_path / "raw"))
    pem = write_package(real_package, load_private_key(tmp_path / "pem"))
    assert raw == pem == write_package(real_package, key)
