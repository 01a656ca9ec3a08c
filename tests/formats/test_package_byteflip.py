"""Any single flipped bit or byte anywhere in a signed package makes verification with the key fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from package_crafting import flip

from hpkg.errors import PackageError, VerifyError
from hpkg.formats import Package, read_package, verify_signature, write_package


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
