"""Ed25519 keys and signatures: key files, key ids, and the one message a package signature covers."""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hpkg.errors import HpkgError, PackageError, VerifyError
from hpkg.formats.header import KEY_ID_SIZE
from hpkg.formats.limits import read_bounded

# A key object, its bytes (PEM or raw 32), or the path of a key file.
PublicKeyLike = Ed25519PublicKey | bytes | str | os.PathLike[str]
RAW_KEY_SIZE = 32
MAX_KEY_FILE = 64 * 1024
# Domain separation: a signature made for an .hpkg cannot be replayed as a signature of anything else.
SIGNATURE_CONTEXT = b"hpkg package signature v1\x00"


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


def _read_key_file(path: str | os.PathLike[str], what: str, error: type[HpkgError]) -> bytes:
    return read_bounded(path, MAX_KEY_FILE, what, error, f"is too large to be an Ed25519 {what}")


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
    """An Ed25519 public key from SubjectPublicKeyInfo PEM or the raw 32 bytes."""
    if len(material) == RAW_KEY_SIZE:
        return Ed25519PublicKey.from_public_bytes(material)
    try:
        key = serialization.load_pem_public_key(material)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise VerifyError(f"{source} is not a PEM Ed25519 public key or a raw 32-byte key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise VerifyError(f"{source} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a private key file written by `hpkg keygen` (PEM) or a raw 32-byte seed file."""
    return private_key_from_bytes(_read_key_file(path, "private key", PackageError), os.fspath(path))


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a public key file written by `hpkg keygen` (PATH.pub, PEM) or a raw 32-byte key file."""
    return public_key_from_bytes(_read_key_file(path, "public key", VerifyError), os.fspath(path))


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
