"""A PE image's identity: the key hpkg records for a baseline and looks for in a process.

PE32+ has no GNU build-id. Microsoft's symbol and update tooling key an image by its CodeView debug
record (RSDS: a GUID and an age, renewed at every link; mingw-w64's ld writes one with
`-Wl,--build-id`), else by TimeDateStamp + SizeOfImage. hpkg's identity, as hex:

  RSDS present:  GUID (16 bytes as stored) ‖ age (4 bytes, little-endian)               = 20 bytes
  otherwise:     TimeDateStamp (4, LE) ‖ SizeOfImage (4, LE) ‖ SHA-256(headers)[:12]   = 20 bytes

"headers" are the first SizeOfHeaders bytes (DOS stub, COFF and optional headers, section table)
with the 8 bytes of ImageBase zeroed: a loader that rebases the image may write the actual base
there, and nothing else in the headers changes in memory. The digest tells apart two links that
share a stamp (mingw's ld writes a fixed one when asked for reproducible output), and Wine maps
exactly those bytes from the file at the image base, so a process yields the same digest.
Both forms are computed from an `RvaReader`, from the file or from process memory alike.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from hpkg.pe.constants import CODEVIEW_RSDS, IMAGE_DEBUG_TYPE_CODEVIEW, IMAGE_DIRECTORY_ENTRY_DEBUG
from hpkg.pe.headers import IMAGE_BASE_FIELD, PeHeaders, RvaReader, parse_headers

# IMAGE_DEBUG_DIRECTORY: Characteristics, TimeDateStamp, Major/MinorVersion, Type, SizeOfData,
# AddressOfRawData (RVA), PointerToRawData (file offset).
DEBUG_DIRECTORY = struct.Struct("<IIHHIIII")
RSDS_HEADER = struct.Struct("<4s16sI")  # "RSDS", GUID, age; the PDB path (NUL-terminated) follows
MAX_DEBUG_ENTRIES = 32
IDENTITY_BYTES = 20


@dataclass(frozen=True)
class CodeView:
    """A CodeView 7.0 (RSDS) record: the GUID and age a PDB is matched by, and the PDB path."""

    guid: bytes
    age: int
    pdb_path: str

    @property
    def guid_text(self) -> str:
        """The GUID as Windows spells it (first three fields little-endian)."""
        a, b, c = struct.unpack_from("<IHH", self.guid)
        rest = self.guid[8:].hex()
        return f"{a:08x}-{b:04x}-{c:04x}-{rest[:4]}-{rest[4:]}"


def read_codeview(headers: PeHeaders, read: RvaReader) -> CodeView | None:
    """The RSDS record the debug directory points at (by RVA), or None."""
    rva, size = headers.directory(IMAGE_DIRECTORY_ENTRY_DEBUG)
    if not rva or size < DEBUG_DIRECTORY.size:
        return None
    count = min(size // DEBUG_DIRECTORY.size, MAX_DEBUG_ENTRIES)
    table = read(rva, count * DEBUG_DIRECTORY.size)
    for i in range(len(table) // DEBUG_DIRECTORY.size):
        *_, kind, data_size, data_rva, _ = DEBUG_DIRECTORY.unpack_from(table, i * DEBUG_DIRECTORY.size)
        if kind != IMAGE_DEBUG_TYPE_CODEVIEW or data_size < RSDS_HEADER.size or not data_rva:
            continue
        record = read(data_rva, min(data_size, 4096))
        if len(record) < RSDS_HEADER.size or record[:4] != CODEVIEW_RSDS:
            continue
        _, guid, age = RSDS_HEADER.unpack_from(record)
        path = record[RSDS_HEADER.size :].partition(b"\0")[0].decode("utf-8", "backslashreplace")
        return CodeView(guid, age, path)
    return None


def header_digest(headers: PeHeaders, read: RvaReader) -> bytes:
    """SHA-256 of the first SizeOfHeaders bytes (the bytes Wine maps from the file at the base), with
    ImageBase zeroed (a rebased image may hold its actual base there)."""
    raw = bytearray(read(0, headers.size_of_headers))
    at = headers.optional_header_offset + IMAGE_BASE_FIELD
    raw[at : at + 8] = bytes(min(8, max(len(raw) - at, 0)))
    return hashlib.sha256(raw).digest()


def image_identity(headers: PeHeaders, read: RvaReader) -> bytes:
    """The 20-byte identity of the module docstring: CodeView GUID + age, else stamp, size and digest."""
    codeview = read_codeview(headers, read)
    if codeview is not None:
        return codeview.guid + struct.pack("<I", codeview.age)
    stamp = struct.pack("<II", headers.time_date_stamp, headers.size_of_image)
    return stamp + header_digest(headers, read)[: IDENTITY_BYTES - len(stamp)]


def read_identity(read: RvaReader, what: str) -> bytes:
    """The identity of the image `read` reaches (a file through `file_reader`, or a process's mapping
    of it through `memory_reader`): what the loader compares with a package's baseline record."""
    headers = parse_headers(read, what)
    return image_identity(headers, read)
