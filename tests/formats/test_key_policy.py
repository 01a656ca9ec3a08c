"""Keys hpkg trusts: key files only their owner can change (and read, when private), no degenerate
Ed25519 public keys, and `verify --against` under apply's signature policy.

The small-order list is checked against the curve itself: plain Edwards arithmetic below finds that
the eight listed encodings are eight distinct points P with [8]P = identity, i.e. the whole torsion
subgroup (it has exactly eight elements), so no small-order point is missing from it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from package_crafting import assemble, split

from hpkg.cli import main
from hpkg.errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE, PackageError, VerifyError
from hpkg.formats import Package, key_id, load_private_key, load_public_key, read_package, write_package
from hpkg.formats.signing import SMALL_ORDER_POINTS, public_key_from_bytes, signed_message

NOBODY = 65534


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `hpkg ARGS` in-process through the real entry point; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return exit_info.value.code, out, err


def assert_one_error_line(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err


def run_the_fix(message: str) -> None:
    """Run the command an error line ends with (`…; run: chmod go-w PATH`), as an operator would."""
    subprocess.run(message.strip().split("run: ", 1)[1], shell=True, check=True)

# --- Curve25519 in twisted Edwards form (RFC 8032 section 5.1), enough to decode and add points ---
P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1)


def decode_point(encoding: bytes) -> tuple[int, int]:
    """RFC 8032 5.1.3: the point (x, y) an encoding names; ValueError when it names none."""
    y = int.from_bytes(encoding, "little") & ((1 << 255) - 1)
    sign = encoding[31] >> 7
    if y >= P:
        raise ValueError("non-canonical y")
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    if v * x * x % P != u:
        raise ValueError("not on the curve")
    if x == 0 and sign:
        raise ValueError("negative zero")
    if x & 1 != sign:
        x = P - x
    return x, y


def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The Edwards addition law (complete on this curve), affine."""
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P)


def times_eight(point: tuple[int, int]) -> tuple[int, int]:
    for _ in range(3):
        point = add(point, point)
    return point


def test_the_small_order_list_is_the_whole_torsion_subgroup() -> None:
    points = [decode_point(encoding) for encoding in SMALL_ORDER_POINTS]
    assert len(set(points)) == 8
    assert all(times_eight(point) == IDENTITY for point in points)
    assert IDENTITY in points
    # A real public key is not of small order.
    real = serialization.load_pem_public_key(_real_public_pem()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert times_eight(decode_point(real)) != IDENTITY


def _real_public_pem() -> bytes:
    from hpkg.formats.signing import generate_keypair

    return generate_keypair()[1]


@pytest.mark.parametrize("encoding", SMALL_ORDER_POINTS, ids=[e.hex()[:8] for e in SMALL_ORDER_POINTS])
def test_every_small_order_public_key_is_refused_raw_and_as_pem(encoding: bytes) -> None:
    with pytest.raises(VerifyError, match="small-order"):
        public_key_from_bytes(encoding)
    pem = Ed25519PublicKey.from_public_bytes(encoding).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(VerifyError, match="small-order"):
        public_key_from_bytes(pem)
    # The same point with the sign bit flipped (for x = 0 a non-canonical encoding) is refused too.
    flipped = encoding[:31] + bytes([encoding[31] ^ 0x80])
    with pytest.raises(VerifyError, match="small-order"):
        public_key_from_bytes(flipped)


@pytest.mark.parametrize("y", [P, P + 1, 2**255 - 1], ids=["p", "p+1 (the identity again)", "2^255-1"])
def test_non_canonical_public_keys_are_refused(y: int) -> None:
    with pytest.raises(VerifyError, match="not a canonical"):
        public_key_from_bytes(y.to_bytes(32, "little"))


def test_a_forged_signature_that_verifies_under_the_identity_key_is_refused(
    real_package: Package, signing_key, tmp_path: Path, programs, capsys
) -> None:
    """R = identity, S = 0 is a valid RFC 8032 signature of every message under the identity "key":
    [S]B = 0 = R + [k]A for any k. OpenSSL accepts it; hpkg refuses the key."""
    identity = SMALL_ORDER_POINTS[0]
    forged_signature = identity + bytes(32)
    fields, document, frame, _ = split(write_package(real_package, signing_key))
    fields[4] = key_id(Ed25519PublicKey.from_public_bytes(identity))
    forged = assemble(fields, document, frame, forged_signature)
    # The forgery is real: the library under hpkg verifies it.
    header, stored = forged[:48], forged[48 : 48 + fields[5]]
    Ed25519PublicKey.from_public_bytes(identity).verify(forged_signature, signed_message(header, stored))
    with pytest.raises(VerifyError, match="small-order"):
        read_package(forged, Ed25519PublicKey.from_public_bytes(identity))

    package, key = tmp_path / "forged.hpkg", tmp_path / "identity.pub"
    package.write_bytes(forged)
    key.write_bytes(identity)
    for argv in (("verify", str(package), "--key", str(key)),
                 ("apply", str(package), "--key", str(key), "--file", str(programs[0]),
                  "-o", str(tmp_path / "patched"))):
        code, _, err = run_cli(capsys, *argv)
        assert code == EXIT_INVALID and "small-order" in err, err
        assert_one_error_line(err)
    assert not (tmp_path / "patched").exists()


# --- key files ---------------------------------------------------------------------------------


@pytest.fixture()
def key_files(tmp_path: Path, capsys) -> tuple[Path, Path]:
    private = tmp_path / "release"
    assert run_cli(capsys, "keygen", str(private))[0] == EXIT_OK
    return private, Path(f"{private}.pub")


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646], ids=["world+group", "group", "world"])
def test_a_writable_public_key_is_refused_with_the_chmod_that_fixes_it(
    key_files, real_package: Package, tmp_path: Path, capsys, mode: int
) -> None:
    private, public = key_files
    package = tmp_path / "s.hpkg"
    package.write_bytes(write_package(real_package, load_private_key(private)))
    public.chmod(mode)
    code, _, err = run_cli(capsys, "verify", str(package), "--key", str(public))
    assert code == EXIT_INVALID and f"writable by group or others (mode 0{mode:o})" in err, err
    assert f"run: chmod go-w {public}" in err
    assert_one_error_line(err)
    run_the_fix(err)
    assert run_cli(capsys, "verify", str(package), "--key", str(public))[0] == EXIT_OK


@pytest.mark.parametrize(
    "mode", [0o640, 0o604, 0o620, 0o660], ids=["group-read", "world-read", "group-write", "group-rw"]
)
def test_a_private_key_others_can_open_is_refused_with_the_chmod_that_fixes_it(
    key_files, mode: int
) -> None:
    private, _ = key_files
    private.chmod(mode)
    expected = rf"open to group or others \(mode 0{mode:o}\); run: chmod go-rwx"
    with pytest.raises(PackageError, match=expected) as refused:
        load_private_key(private)
    run_the_fix(str(refused.value))
    load_private_key(private)


def test_a_key_file_another_user_owns_is_refused(key_files) -> None:
    private, public = key_files
    cases = ((public, load_public_key, VerifyError), (private, load_private_key, PackageError))
    for path, load, error in cases:
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(error, match=rf"belongs to uid {NOBODY}, who could replace it; run: chown 0"):
            load(path)
        os.chown(path, 0, 0)
        load(path)


def test_build_refuses_a_readable_private_key(key_files, programs, tmp_path: Path, capsys) -> None:
    private, _ = key_files
    private.chmod(0o644)
    old, new = map(str, programs)
    code, _, err = run_cli(capsys, "build", old, new, "-o", str(tmp_path / "p.hpkg"), "--key", str(private))
    assert code == EXIT_INVALID and "run: chmod go-rwx" in err, err
    assert not (tmp_path / "p.hpkg").exists()


# --- verify --against follows apply's policy ---------------------------------------------------


def test_verify_against_follows_the_signature_policy_of_apply(
    key_files, real_package: Package, programs, tmp_path: Path, capsys
) -> None:
    private, public = key_files
    unsigned, signed = tmp_path / "u.hpkg", tmp_path / "s.hpkg"
    unsigned.write_bytes(write_package(real_package))
    signed.write_bytes(write_package(real_package, load_private_key(private)))
    baseline = str(programs[0])

    code, _, err = run_cli(capsys, "verify", str(unsigned), "--against", baseline)
    assert code == EXIT_INVALID and "is unsigned: pass --allow-unsigned" in err, err
    code, out, _ = run_cli(capsys, "verify", str(unsigned), "--against", baseline, "--allow-unsigned")
    assert code == EXIT_OK and "signature: none" in out
    code, _, err = run_cli(capsys, "verify", str(signed), "--against", baseline)
    assert code == EXIT_INVALID and "pass --key PUB" in err, err
    code, out, _ = run_cli(capsys, "verify", str(signed), "--against", baseline, "--key", str(public))
    assert code == EXIT_OK and "signature: ok" in out
    code, _, err = run_cli(capsys, "verify", str(unsigned), "--against", baseline, "--key", str(public))
    assert code == EXIT_INVALID and "not signed" in err, err
    # Alone, verify still checks what it is given, and says that no signature was checked.
    code, out, _ = run_cli(capsys, "verify", str(unsigned))
    assert code == EXIT_OK and "signature: none" in out and "digests: ok (header and manifest" in out
    assert run_cli(capsys, "verify", str(unsigned), "--allow-unsigned")[0] == EXIT_USAGE
    assert run_cli(capsys, "verify", str(signed), "--key", str(public), "--allow-unsigned",
                   "--against", baseline)[0] == EXIT_USAGE
