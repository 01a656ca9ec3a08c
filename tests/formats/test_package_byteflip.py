"""Any single flipped bit or byte anywhere in a signed package makes verification with the key fail; any
single flipped bit of an unsigned package (1.3, with its package digest) makes reading it fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from package_crafting import assemble, flip, split

from hpkg.errors import PackageError, VerifyError
from hpkg.formats import Package, read_package, verify_signature, write_package
from hpkg.formats.header import HEADER_SIZE, decode_header


@pytest.fixture(scope="module")
def signed(real_package: Package, signing_key) -> bytes:
    return write_package(real_package, signing_key)


def _verifies(blob: bytes, public_key) -> bool:
    """What `hpkg verify --key` decides, through the library: read with the key first, then without."""
    try:
        read_package(blob, public_key)
    except (PackageError, VerifyError):
        return False
    return True


def _verifies_after_reading(blob: bytes, public_key) -> bool:
    """The other order a loader might use: parse everything, then check the signature."""
    try:
        verify_signature(read_package(blob), public_key)
    except (PackageError, VerifyError):
        return False
    return True


def test_every_single_bit_flip_fails_verification(signed: bytes, signing_key) -> None:
    public_key = signing_key.public_key()
    assert _verifies(signed, public_key) and _verifies_after_reading(signed, public_key)
    survivors = [
        (index, bit)
        for index in range(len(signed))
        for bit in range(8)
        if _verifies(flip(signed, index, 1 << bit), public_key)
    ]
    assert survivors == []


def test_every_byte_flip_fails_verification_when_parsed_first(signed: bytes, signing_key) -> None:
    public_key = signing_key.public_key()
    survivors = [i for i in range(len(signed)) if _verifies_after_reading(flip(signed, i), public_key)]
    assert survivors == []


def test_cli_verify_with_key_fails_on_a_flipped_byte(signed: bytes, signing_key, tmp_path: Path) -> None:
    public = tmp_path / "key.pub"
    public.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    good, bad = tmp_path / "good.hpkg", tmp_path / "bad.hpkg"
    good.write_bytes(signed)
    bad.write_bytes(flip(signed, len(signed) // 2))
    ok = subprocess.run([sys.executable, "-m", "hpkg", "verify", str(good), "--key", str(public)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "signature: ok" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "hpkg", "verify", str(bad), "--key", str(public)],
                            capture_output=True, text=True)
    assert failed.returncode == 3
    assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
    assert "Traceback" not in failed.stderr


def _reads(blob: bytes) -> bool:
    """What `hpkg verify` without a key (and `inspect`) decides: the package reads as a package."""
    try:
        read_package(blob)
    except (PackageError, VerifyError):
        return False
    return True


def _manifest_bits(blob: bytes) -> list[tuple[int, int]]:
    end = HEADER_SIZE + decode_header(blob).manifest_size
    return [(index, bit) for index in range(HEADER_SIZE, end) for bit in range(8)]


def test_every_single_bit_flip_of_an_unsigned_package_is_refused(real_package: Package) -> None:
    unsigned = write_package(real_package)
    assert _reads(unsigned)
    bits = [(index, bit) for index in range(len(unsigned)) for bit in range(8)]
    assert [(i, bit) for i, bit in bits if _reads(flip(unsigned, i, 1 << bit))] == []


def test_without_the_package_digest_manifest_flips_read_as_another_package(real_package: Package) -> None:
    """Why 1.3 added the digest: the same package as an unsigned 1.0 (no digest, still read) lets many
    single-bit flips of its manifest through as a different, well-formed package."""
    fields, document, frame, _ = split(write_package(real_package))
    fields[2], fields[4] = 0, bytes(8)
    old = assemble(fields, document, frame)
    assert read_package(old).package == real_package and read_package(old).format_version == (1, 0)
    survivors = [(i, bit) for i, bit in _manifest_bits(old) if _reads(flip(old, i, 1 << bit))]
    assert survivors, "a 1.0 manifest without a digest was expected to let some flips through"
    unsigned = write_package(real_package)
    assert [(i, bit) for i, bit in _manifest_bits(unsigned) if _reads(flip(unsigned, i, 1 << bit))] == []
