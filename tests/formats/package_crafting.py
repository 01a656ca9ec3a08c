"""Helpers that take a valid .hpkg apart and put it back together with chosen changes.

They play the adversary: anything a hostile or damaged file could hold, built from a real package.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

from hpkg.formats.compression import compress_manifest, decompress_manifest
from hpkg.formats.header import DIGEST_MINOR, FLAG_SIGNED, HEADER_SIZE, decode_header, with_key_id
from hpkg.formats.manifest import canonical_json
from hpkg.formats.package import package_digest

HEADER_FORMAT = struct.Struct("<8sHHI8sIIQQ")


def manifest_json(blob: bytes) -> bytes:
    """The decompressed canonical JSON manifest of a valid package."""
    header = decode_header(blob)
    stored = blob[HEADER_SIZE : HEADER_SIZE + header.manifest_size]
    return decompress_manifest(stored, header.manifest_json_size)


def split(blob: bytes) -> tuple[list[Any], dict[str, Any], bytes, bytes]:
    """(header fields, manifest document, compressed payload, signature) of a valid package."""
    header = decode_header(blob)
    fields = list(HEADER_FORMAT.unpack_from(blob))
    manifest_end = HEADER_SIZE + header.manifest_size
    frame_end = manifest_end + header.compressed_size
    return fields, json.loads(manifest_json(blob)), blob[manifest_end:frame_end], blob[frame_end:]


def assemble(
    fields: list[Any],
    manifest: dict[str, Any] | bytes,
    frame: bytes,
    signature: bytes = b"",
    *,
    fix_sizes: bool = True,
    fix_payload_digest: bool = True,
    fix_package_digest: bool = True,
    stored_manifest: bytes | None = None,
) -> bytes:
    """Rebuild a package; by default the header sizes and the payload digest are made consistent.

    A dict manifest is encoded canonically, bytes are taken as the manifest's JSON text; either is then
    compressed as the writer does. `stored_manifest` puts those bytes in the file as they are instead.
    An unsigned package of format 1.3 or later gets the digest of its new header and manifest in its key
    id field (anyone can compute it: it protects against damage, the structural checks against hostile
    content), unless `fix_package_digest` is false.
    """
    fields = list(fields)
    if isinstance(manifest, dict):
        manifest = dict(manifest)
        if fix_payload_digest:
            manifest["payload_sha256"] = hashlib.sha256(frame).hexdigest()
        manifest = canonical_json(manifest)
    stored = compress_manifest(manifest) if stored_manifest is None else stored_manifest
    if fix_sizes:
        fields[5] = len(stored)  # manifest_size, as stored
        fields[6] = len(manifest)  # manifest_json_size
        fields[7] = len(frame)  # compressed_size
    header = HEADER_FORMAT.pack(*fields)
    if fix_package_digest and not fields[3] & FLAG_SIGNED and fields[2] >= DIGEST_MINOR:
        header = with_key_id(header, package_digest(header, stored))
    return header + stored + frame + signature


def flip(blob: bytes, index: int, mask: int = 0xFF) -> bytes:
    """`blob` with the byte at `index` XORed with `mask`."""
    return blob[:index] + bytes([blob[index] ^ mask]) + blob[index + 1 :]




def with_sections(blob: bytes, **sections: bytes) -> bytes:
    """Re-pack `blob` (unsigned) with some payload sections replaced, every digest and size consistent."""
    from hpkg.formats.compression import compress_payload
    from hpkg.formats.manifest import SECTION_NAMES
    from hpkg.formats.package import read_package
    from hpkg.formats.reloctable import encode_relocations

    pkg = read_package(blob).package
    current = {"code": pkg.code, "rodata": pkg.rodata, "data": pkg.data,
               "relocations": encode_relocations(pkg.relocations)}
    current.update(sections)
    fields, document, _, _ = split(blob)
    payload = b"".join(current[name] for name in SECTION_NAMES)
    document["sections"] = {
        name: {"size": len(current[name]), "sha256": hashlib.sha256(current[name]).hexdigest()}
        for name in SECTION_NAMES
    }
    fields[8] = len(payload)
    return assemble(fields, document, compress_payload(payload))
