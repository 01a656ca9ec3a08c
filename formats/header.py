"""The fixed 48-byte .hpkg header: magic, format version, flags, key id and the sizes of what follows.

Both compressed parts (manifest and payload) have their stored size and their decompressed size here,
so the reader bounds every allocation from these 48 bytes before it touches a zstd frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.errors import PackageError
from hpkg.formats import limits

MAGIC = b"\x89HPKG\r\n\x1a"  # PNG-style: a high byte and CR LF catch text-mode and 7-bit mangling
FORMAT_MAJOR = 1
FORMAT_MINOR = 4  # the newest minor this hpkg reads and writes
# 1.1 added the optional unwind section; a package without one is written as 1.0, byte for byte as before.
UNWIND_MINOR = 1
# 1.3: an unsigned package carries a digest of its header and manifest in the key id field, which it
# does not otherwise use (a signed package is written as before: its signature covers both).
DIGEST_MINOR = 3
# 1.4: a Windows PE32+ baseline (target.file_format "pe32+", target.image_base, baseline addresses as
# RVAs, the unwind section as RUNTIME_FUNCTIONs); ELF packages are written as before.
PE_MINOR = 4
FLAG_SIGNED = 0x1
KNOWN_FLAGS = FLAG_SIGNED
KEY_ID_OFFSET = 16
KEY_ID_SIZE = 8
SIGNATURE_SIZE = 64  # an Ed25519 signature

# magic, major, minor, flags, key_id, manifest_size, manifest_json_size, compressed_size, payload_size
_HEADER = struct.Struct("<8sHHI8sIIQQ")
HEADER_SIZE = _HEADER.size  # 48


@dataclass(frozen=True)
class Header:
    """The header's fields; `total_size` is the exact file size they imply."""

    major: int
    minor: int
    flags: int
    key_id: bytes
    manifest_size: int  # the compressed manifest as stored in the file
    manifest_json_size: int  # its canonical JSON after decompression
    compressed_size: int
    payload_size: int

    @property
    def signed(self) -> bool:
        return bool(self.flags & FLAG_SIGNED)

    @property
    def has_digest(self) -> bool:
        """An unsigned package of minor 3 or later: its key id field holds the package digest."""
        return not self.signed and self.minor >= DIGEST_MINOR

    @property
    def total_size(self) -> int:
        trailer = SIGNATURE_SIZE if self.signed else 0
        return HEADER_SIZE + self.manifest_size + self.compressed_size + trailer


def without_key_id(header: bytes) -> bytes:
    """The header bytes with the key id field zeroed: what the package digest of an unsigned 1.3 covers."""
    return header[:KEY_ID_OFFSET] + bytes(KEY_ID_SIZE) + header[KEY_ID_OFFSET + KEY_ID_SIZE : HEADER_SIZE]


def with_key_id(header: bytes, key_id: bytes) -> bytes:
    """The header bytes with `key_id` in the key id field."""
    return header[:KEY_ID_OFFSET] + key_id + header[KEY_ID_OFFSET + KEY_ID_SIZE : HEADER_SIZE]


def encode_header(header: Header) -> bytes:
    """The 48 header bytes for `header`."""
    return _HEADER.pack(
        MAGIC,
        header.major,
        header.minor,
        header.flags,
        header.key_id,
        header.manifest_size,
        header.manifest_json_size,
        header.compressed_size,
        header.payload_size,
    )


def decode_header(blob: bytes) -> Header:
    """Parse and bound-check the header at the start of `blob`; the file size must match it exactly."""
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        raise PackageError("not an .hpkg package (bad magic bytes)")
    if len(blob) < len(MAGIC) + 4:
        raise PackageError(f"truncated package: {len(blob)} bytes, the header alone is {HEADER_SIZE}")
    # Read the version before anything else: a future major may lay out the rest differently.
    major, minor = struct.unpack_from("<HH", blob, len(MAGIC))
    if major != FORMAT_MAJOR:
        raise PackageError(
            f"unsupported .hpkg format version {major}.{minor}: this hpkg reads version "
            f"{FORMAT_MAJOR}.x only; use a matching hpkg release"
        )
    if len(blob) < HEADER_SIZE:
        raise PackageError(f"truncated package: {len(blob)} bytes, the header alone is {HEADER_SIZE}")
    fields = _HEADER.unpack_from(blob)
    flags, key_id, manifest_size, json_size, compressed_size, payload_size = fields[3:]
    if flags & ~KNOWN_FLAGS:
        raise PackageError(f"corrupt header: unknown flag bits 0x{flags & ~KNOWN_FLAGS:x}")
    if not flags & FLAG_SIGNED and minor < DIGEST_MINOR and key_id != bytes(KEY_ID_SIZE):
        raise PackageError("corrupt header: an unsigned package carries a key id")
    if manifest_size == 0 or manifest_size > limits.MAX_MANIFEST_FRAME_SIZE:
        raise PackageError(
            f"manifest size {manifest_size} is outside 1..{limits.MAX_MANIFEST_FRAME_SIZE} bytes;"
            " refusing the package"
        )
    if json_size == 0 or json_size > limits.MAX_MANIFEST_SIZE:
        raise PackageError(
            f"package declares a manifest of {json_size} bytes, outside 1..{limits.MAX_MANIFEST_SIZE};"
            " refusing it before decompression"
        )
    if payload_size > limits.MAX_PAYLOAD_SIZE:
        raise PackageError(
            f"package declares {payload_size} bytes of payload, over the limit of {limits.MAX_PAYLOAD_SIZE};"
            " refusing it before decompression"
        )
    if compressed_size == 0 or compressed_size > limits.MAX_COMPRESSED_SIZE:
        raise PackageError(
            f"compressed payload size {compressed_size} is outside 1..{limits.MAX_COMPRESSED_SIZE} bytes;"
            " refusing the package"
        )
    header = Header(major, minor, flags, key_id, manifest_size, json_size, compressed_size, payload_size)
    if len(blob) < header.total_size:
        raise PackageError(f"truncated package: {len(blob)} bytes, the header declares {header.total_size}")
    if len(blob) > header.total_size:
        raise PackageError(
            f"{len(blob) - header.total_size} bytes of trailing garbage after the package "
            f"(the header declares {header.total_size} bytes)"
        )
    return header
