"""The relocation table: fixed 24-byte little-endian records, one per Relocation, in package order."""

from __future__ import annotations

import struct

from hpkg.errors import PackageError
from hpkg.formats.model import PackageSection, Relocation, RelocationKind, TargetSpace

# section u8, kind u8, space u8, reserved u8, offset u32, target u64, addend i64
_RECORD = struct.Struct("<BBBBIQq")
RECORD_SIZE = _RECORD.size  # 24

_SECTIONS = {int(s): s for s in PackageSection}
_KINDS = {int(k): k for k in RelocationKind}
_SPACES = {int(s): s for s in TargetSpace}


def encode_relocations(relocations: tuple[Relocation, ...]) -> bytes:
    """The table bytes for `relocations` (the package model has already been validated)."""
    return b"".join(
        _RECORD.pack(r.section, r.kind, r.space, 0, r.offset, r.target, r.addend) for r in relocations
    )


def decode_relocations(table: bytes) -> tuple[Relocation, ...]:
    """Parse the table; an unknown section, kind or space, or a partial record, is a PackageError."""
    if len(table) % RECORD_SIZE:
        raise PackageError(
            f"corrupt relocation table: {len(table)} bytes is not a whole number"
            f" of {RECORD_SIZE}-byte records"
        )
    relocations = []
    for index, (section, kind, space, reserved, offset, target, addend) in enumerate(
        _RECORD.iter_unpack(table)
    ):
        if section not in _SECTIONS:
            raise PackageError(f"corrupt relocation #{index}: unknown section number {section}")
        if kind not in _KINDS:
            raise PackageError(
                f"relocation #{index} has relocation type {kind}, which this hpkg does not support"
            )
        if space not in _SPACES:
            raise PackageError(f"corrupt relocation #{index}: unknown target space {space}")
        if reserved:
            raise PackageError(f"corrupt relocation #{index}: reserved byte is not zero")
        relocation = Relocation(_SECTIONS[section], offset, _KINDS[kind], _SPACES[space], target, addend)
        relocations.append(relocation)
    return tuple(relocations)
