"""Package ⇄ .hpkg bytes: the writer and the strict reader (layout in formats/SPEC.md).

File = header (48 bytes) | manifest (one zstd frame) | payload (one zstd frame) | signature (64, if signed).
An unsigned package (1.3 on) keeps a digest of its header and manifest in the header's key id field.
The manifest decompresses, with the format's fixed dictionary, to canonical JSON; the payload to
code | rodata | data | relocation table, sizes and digests in the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpkg.errors import PackageError, VerifyError
from hpkg.formats import limits
from hpkg.formats.compression import (
    compress_manifest,
    compress_payload,
    decompress_manifest,
    decompress_payload,
)
from hpkg.formats.header import (
    DIGEST_MINOR,
    FLAG_SIGNED,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    HEADER_SIZE,
    KEY_ID_SIZE,
    PE_MINOR,
    SIGNATURE_SIZE,
    UNWIND_MINOR,
    Header,
    decode_header,
    encode_header,
    with_key_id,
    without_key_id,
)
from hpkg.formats.manifest import SectionEntry, decode_manifest, encode_manifest, section_names
from hpkg.formats.model import LoadedPackage, Package
from hpkg.formats.reloctable import decode_relocations, encode_relocations
from hpkg.formats.signing import PublicKeyLike, as_public_key, check_signature, key_id, sign, signed_message
from hpkg.formats.validate import validate_package

# Domain separation, as for the signature: this digest is of an .hpkg header and manifest and nothing else.
DIGEST_CONTEXT = b"hpkg package digest v1\x00"
# The largest well-formed file: the reader refuses anything bigger before reading it all.
MAX_FILE_SIZE = HEADER_SIZE + limits.MAX_MANIFEST_FRAME_SIZE + limits.MAX_COMPRESSED_SIZE + SIGNATURE_SIZE


def _minor(pkg: Package, signed: bool) -> int:
    """The minor version `pkg` is written as: 1.1 only when it carries unwind rules, so a 1.0 reader
    still reads every package without them and refuses one with them (its sections add up wrong);
    1.3 for every unsigned package, which ends with a digest (a signed package is written as before);
    1.4 for a PE32+ baseline, signed or not (an unsigned one keeps the digest of 1.3)."""
    minor = UNWIND_MINOR if pkg.unwind else 0
    if pkg.target.is_pe:
        return PE_MINOR  # 1.4 on: a 1.3 reader refuses the pe32+ target it does not know
    return minor if signed else max(minor, DIGEST_MINOR)


def package_digest(header: bytes, manifest: bytes) -> bytes:
    """The digest an unsigned package (1.3) keeps in its key id field: the first 8 bytes of SHA-256 of a
    context string, the header with that field zeroed, and the manifest, as stored. The manifest pins
    the payload by its digests, so this pins every byte of the file. Against damage, not an attacker."""
    return hashlib.sha256(DIGEST_CONTEXT + without_key_id(header) + manifest).digest()[:KEY_ID_SIZE]


def _section_bytes(pkg: Package) -> dict[str, bytes]:
    """The payload's sections; `unwind` only when there are unwind rules (an absent entry reads as empty)."""
    sections = {
        "code": pkg.code,
        "rodata": pkg.rodata,
        "data": pkg.data,
        "relocations": encode_relocations(pkg.relocations),
        "unwind": pkg.unwind,
    }
    return {name: sections[name] for name in section_names(UNWIND_MINOR if pkg.unwind else 0)}


def write_package(pkg: Package, signing_key: Ed25519PrivateKey | None = None) -> bytes:
    """The .hpkg bytes for `pkg`, signed when a key is given; same inputs and key give the same bytes."""
    validate_package(pkg)
    minor = _minor(pkg, signing_key is not None)
    sections = _section_bytes(pkg)
    payload = b"".join(sections.values())
    if len(payload) > limits.MAX_PAYLOAD_SIZE:
        raise PackageError(
            f"package payload is {len(payload)} bytes, over the limit of {limits.MAX_PAYLOAD_SIZE}"
        )
    frame = compress_payload(payload)
    entries = {name: SectionEntry(len(b), hashlib.sha256(b).digest()) for name, b in sections.items()}
    manifest_json = encode_manifest(pkg, entries, hashlib.sha256(frame).digest())
    if len(manifest_json) > limits.MAX_MANIFEST_SIZE:
        raise PackageError(
            f"manifest is {len(manifest_json)} bytes, over the limit of {limits.MAX_MANIFEST_SIZE}"
        )
    manifest = compress_manifest(manifest_json)
    if len(manifest) > limits.MAX_MANIFEST_FRAME_SIZE:  # cannot happen for JSON this size; checked anyway
        raise PackageError(
            f"compressed manifest is {len(manifest)} bytes, over {limits.MAX_MANIFEST_FRAME_SIZE}"
        )
    header = encode_header(
        Header(
            major=FORMAT_MAJOR,
            minor=minor,
            flags=FLAG_SIGNED if signing_key else 0,
            key_id=key_id(signing_key.public_key()) if signing_key else bytes(KEY_ID_SIZE),
            manifest_size=len(manifest),
            manifest_json_size=len(manifest_json),
            compressed_size=len(frame),
            payload_size=len(payload),
        )
    )
    if signing_key:
        return header + manifest + frame + sign(signing_key, signed_message(header, manifest))
    return with_key_id(header, package_digest(header, manifest)) + manifest + frame


def read_package(blob: bytes, public_key: PublicKeyLike | None = None) -> LoadedPackage:
    """Parse and check `blob` completely; with `public_key`, check the signature before parsing the manifest.

    Raises PackageError for anything malformed and VerifyError for digests or a signature that do not hold.
    """
    # STEP 1: the fixed header, which bounds every size that follows and must match the file size.
    header = decode_header(blob)
    manifest_end = HEADER_SIZE + header.manifest_size
    payload_end = manifest_end + header.compressed_size
    header_bytes, manifest_bytes = blob[:HEADER_SIZE], blob[HEADER_SIZE:manifest_end]
    frame = blob[manifest_end:payload_end]
    signature = blob[payload_end:] if header.signed else None
    message = signed_message(header_bytes, manifest_bytes)

    # STEP 2: authenticate before parsing anything more, when the caller has a key; an unsigned package's
    # digest (1.3 on) is checked either way, so that a damaged manifest is never read as another package.
    if public_key is not None:
        check_signature(as_public_key(public_key), header.key_id, signature, message)
    if header.has_digest and header.key_id != package_digest(header_bytes, manifest_bytes):
        raise VerifyError("package digest does not match its header and manifest: the package was damaged")

    # STEP 3: the manifest (bounded decompression, then strict canonical JSON), then the compressed
    # payload against its digest, still before decompressing the payload.
    manifest_json = decompress_manifest(manifest_bytes, header.manifest_json_size)
    manifest = decode_manifest(manifest_json, lenient=header.minor > FORMAT_MINOR, minor=header.minor)
    names = section_names(header.minor)
    if hashlib.sha256(frame).digest() != manifest.payload_sha256:
        raise VerifyError("compressed payload does not match its digest: the package was altered or damaged")
    declared = sum(manifest.sections[name].size for name in names)
    if declared != header.payload_size:
        raise PackageError(
            f"corrupt package: sections add up to {declared} bytes, the header declares {header.payload_size}"
        )

    # STEP 4: decompress (bounded), split into sections and check each digest.
    payload = decompress_payload(frame, header.payload_size)
    sections: dict[str, bytes] = {}
    start = 0
    for name in names:
        entry = manifest.sections[name]
        sections[name] = payload[start : start + entry.size]
        start += entry.size
        if hashlib.sha256(sections[name]).digest() != entry.sha256:
            raise VerifyError(f"section {name} does not match its digest: the package was altered or damaged")

    # STEP 5: the whole package, cross-checked as the writer checked it.
    package = dataclasses.replace(
        manifest.package,
        code=sections["code"],
        rodata=sections["rodata"],
        data=sections["data"],
        relocations=decode_relocations(sections["relocations"]),
        unwind=sections.get("unwind", b""),
    )
    validate_package(package)
    return LoadedPackage(
        package=package,
        format_version=(header.major, header.minor),
        file_size=len(blob),
        manifest_size=header.manifest_size,
        manifest_json_size=header.manifest_json_size,
        compressed_size=header.compressed_size,
        payload_size=header.payload_size,
        signed=header.signed,
        key_id=header.key_id if header.signed else None,
        section_digests={name: entry.sha256 for name, entry in manifest.sections.items()},
        payload_digest=manifest.payload_sha256,
        signed_message=message,
        signature=signature,
        ignored_fields=manifest.ignored_fields,
    )


def verify_signature(loaded: LoadedPackage, public_key: PublicKeyLike) -> None:
    """Raise VerifyError unless `loaded` is signed by `public_key` (a key, PEM or raw bytes, or a path)."""
    check_signature(as_public_key(public_key), loaded.key_id or b"", loaded.signature, loaded.signed_message)


def read_package_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a package file, refusing one larger than any valid package before reading it."""
    too_large = f"is larger than any valid package ({MAX_FILE_SIZE} bytes)"
    return limits.read_bounded(path, MAX_FILE_SIZE, "package", PackageError, too_large)
