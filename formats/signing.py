"""Ed25519 keys and signatures: key files, key ids, and the one message a package signature covers."""

from __future__ import annotations

import hashlib
import os
import shlex
import stat

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hpkg.errors import HpkgError, PackageError, VerifyError
from hpkg.formats.header import KEY_ID_SIZE

# A key object, its bytes (PEM or raw 32), or the path of a key file.
PublicKeyLike = Ed25519PublicKey | bytes | str | os.PathLike[str]
RAW_KEY_SIZE = 32
MAX_KEY_FILE = 64 * 1024
# Domain separation: a signature made for an .hpkg cannot be replayed as a signature of anything else.
SIGNATURE_CONTEXT = b"hpkg package signature v1\x00"

# Curve25519's field, and the eight points of order 1, 2, 4 or 8 (the curve's torsion subgroup) in their
# canonical encodings (y little-endian, the sign of x in the top bit), as in libsodium's blocklist:
# the identity (y = 1), order 2 (y = p - 1), order 4 (y = 0, both signs), order 8 (two y, both signs).
_FIELD_PRIME = 2**255 - 19
_Y_MASK = (1 << 255) - 1
SMALL_ORDER_POINTS = tuple(
    bytes.fromhex(encoding)
    for encoding in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    )
)
# Refused by y alone, whatever the sign bit: that also catches the non-canonical "negative" x = 0 of
# y = 1 and y = p - 1.
_SMALL_ORDER_Y = frozenset(int.from_bytes(p, "little") & _Y_MASK for p in SMALL_ORDER_POINTS)


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> bytes:
    """First 8 bytes of SHA-256 of the raw public key: short to show, long enough to tell keys apart."""
    return hashlib.sha256(raw_public_key(public_key)).digest()[:KEY_ID_SIZE]


def generate_keypair() -> tuple[bytes, bytes]:
    """A new key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def _read_key_file(path: str | os.PathLike[str], what: str, error: type[HpkgError], private: bool) -> bytes:
    """The bytes of a key file that only its owner (us or root) can change, and only its owner can read
    when it is a private key: the same rules as ssh's StrictModes, with the command that fixes each."""
    name = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO named as a key must not hang the open; the mode check then refuses it.
        with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK), "rb") as f:
            info = os.fstat(f.fileno())
            if info.st_size > MAX_KEY_FILE:  # not a key, whoever may write it
                raise error(f"{name} is too large to be an Ed25519 {what}")
            _check_key_file_mode(info, name, what, error, private)
            blob = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    if len(blob) > MAX_KEY_FILE:
        raise error(f"{name} is too large to be an Ed25519 {what}")
    return blob


def _check_key_file_mode(
    info: os.stat_result, name: str, what: str, error: type[HpkgError], private: bool
) -> None:
    """Refuse a key file another user could replace (their own, or group/world-writable), or read (a
    private key readable by group or others): who can rewrite a public key decides what gets applied."""
    mode, quoted = stat.S_IMODE(info.st_mode), shlex.quote(name)
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {name} is not a regular file")
    if info.st_uid not in (os.geteuid(), 0):
        fix = f"chown {os.geteuid()} {quoted}"
        raise error(f"{what} {name} belongs to uid {info.st_uid}, who could replace it; run: {fix}")
    if private and mode & 0o077:
        raise error(f"{what} {name} is open to group or others (mode {mode:04o}); run: chmod go-rwx {quoted}")
    if mode & 0o022:
        writable = f"writable by group or others (mode {mode:04o})"
        raise error(f"{what} {name} is {writable}; run: chmod go-w {quoted}")


def private_key_from_bytes(material: bytes, source: str = "key") -> Ed25519PrivateKey:
    """An Ed25519 private key from unencrypted PKCS#8 PEM or a raw 32-byte seed."""
    if len(material) == RAW_KEY_SIZE:
        return Ed25519PrivateKey.from_private_bytes(material)
    try:
        key = serialization.load_pem_private_key(material, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PackageError(
            f"{source} is not an unencrypted PEM Ed25519 private key or a raw 32-byte seed"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError(f"{source} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def public_key_from_bytes(material: bytes, source: str = "key") -> Ed25519PublicKey:
    """An Ed25519 public key from SubjectPublicKeyInfo PEM or the raw 32 bytes; refused when degenerate."""
    if len(material) == RAW_KEY_SIZE:
        key = Ed25519PublicKey.from_public_bytes(material)
    else:
        try:
            key = serialization.load_pem_public_key(material)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise VerifyError(f"{source} is not a PEM Ed25519 public key or a raw 32-byte key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise VerifyError(f"{source} holds a {type(key).__name__}, not an Ed25519 public key")
    check_public_key(key, source)
    return key


def check_public_key(public_key: Ed25519PublicKey, source: str = "key") -> None:
    """Refuse a public key whose encoding is not canonical or whose point has small order.

    RFC 8032 verification (OpenSSL's, behind `cryptography`) takes any 32 bytes that decode to a point.
    With a point of small order, such as the identity, [k]A vanishes and a signature needs no secret:
    R = identity, S = 0 verifies for every message. A y coordinate of p or more (19 values) encodes a
    point again, non-canonically.
    """
    raw = raw_public_key(public_key)
    y = int.from_bytes(raw, "little") & _Y_MASK  # the top bit is the sign of x
    if y >= _FIELD_PRIME:
        raise VerifyError(f"{source} is not a canonical Ed25519 public key (y >= 2^255 - 19): refusing it")
    if y in _SMALL_ORDER_Y:
        raise VerifyError(
            f"{source} is a small-order Ed25519 point, not a real public key: any signature made without a"
            " secret key could verify under it; refusing it"
        )


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a private key file written by `hpkg keygen` (PEM) or a raw 32-byte seed file."""
    return private_key_from_bytes(_read_key_file(path, "private key", PackageError, True), os.fspath(path))


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a public key file written by `hpkg keygen` (PATH.pub, PEM) or a raw 32-byte key file."""
    return public_key_from_bytes(_read_key_file(path, "public key", VerifyError, False), os.fspath(path))


def as_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    """Accept a key object, key bytes (PEM or raw) or a path, so callers can pass what they have."""
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, bytes):
        return public_key_from_bytes(key)
    return load_public_key(key)


def signed_message(header: bytes, manifest: bytes) -> bytes:
    """What a package signature covers: a context string, the header and the manifest, as stored."""
    return SIGNATURE_CONTEXT + header + manifest


def sign(private_key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Ed25519 signature of `message` (deterministic: same key and message, same 64 bytes)."""
    return private_key.sign(message)


def check_signature(
    public_key: Ed25519PublicKey, signed_key_id: bytes, signature: bytes | None, message: bytes
) -> None:
    """Raise VerifyError unless `signature` is the given key's signature of `message`."""
    check_public_key(public_key)
    if signature is None:
        raise VerifyError("package is not signed, but a public key was given: refusing an unsigned package")
    expected = key_id(public_key)
    if signed_key_id != expected:
        raise VerifyError(
            f"package was signed by key {signed_key_id.hex()}, not by the given key {expected.hex()}"
        )
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise VerifyError("signature does not match: the package was altered after signing") from None
