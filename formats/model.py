"""The package data model: the plain records a builder writes and a loader reads.

These frozen dataclasses are the contract between `hpkg.builder` (which fills them from a PatchPlan)
and `hpkg.loader` (which acts on them). Bytes on disk are the business of the other modules in
`hpkg.formats`; see formats/SPEC.md for the meaning of every field.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class RelocationKind(IntEnum):
    """How a relocated field is computed, named and numbered after the x86-64 ELF ABI constants."""

    R_X86_64_64 = 1  # S + A, 8 bytes
    R_X86_64_PC32 = 2  # S + A - P, 4 bytes, signed
    R_X86_64_PLT32 = 4  # L + A - P, 4 bytes, signed (a call or jmp through a PLT entry or direct)
    R_X86_64_GOTPCREL = 9  # G + GOT + A - P, 4 bytes, signed (a GOT slot the loader provides)
    R_X86_64_32 = 10  # S + A, 4 bytes, zero-extended
    R_X86_64_32S = 11  # S + A, 4 bytes, sign-extended
    R_X86_64_PC64 = 24  # S + A - P, 8 bytes
    R_X86_64_GOTPCRELX = 41  # as GOTPCREL; the instruction may be relaxed
    R_X86_64_REX_GOTPCRELX = 42  # as GOTPCREL, with a REX prefix; the instruction may be relaxed


# Width in bytes of the field each kind writes; a relocation must fit inside its section.
FIELD_WIDTH: dict[RelocationKind, int] = {
    RelocationKind.R_X86_64_64: 8,
    RelocationKind.R_X86_64_PC32: 4,
    RelocationKind.R_X86_64_PLT32: 4,
    RelocationKind.R_X86_64_GOTPCREL: 4,
    RelocationKind.R_X86_64_32: 4,
    RelocationKind.R_X86_64_32S: 4,
    RelocationKind.R_X86_64_PC64: 8,
    RelocationKind.R_X86_64_GOTPCRELX: 4,
    RelocationKind.R_X86_64_REX_GOTPCRELX: 4,
}


class PackageSection(IntEnum):
    """A package section that holds bytes a relocation can patch (where the field is)."""

    CODE = 1
    RODATA = 2
    DATA = 3
    UNWIND = 4  # format 1.1: the unwind section (CIEs, FDEs, LSDAs of package code)


class TargetSpace(IntEnum):
    """What a relocation's `target` number means: an address kind, named, never a bare int."""

    BASELINE = 0  # a link address in the baseline ELF image; the loader adds the load bias
    CODE = 1  # an offset into the package's code section
    RODATA = 2  # an offset into the package's read-only data
    DATA = 3  # an offset into the package's read-write data
    BSS = 4  # an offset into the package's zero-fill area
    IMPORT = 5  # an index into Package.imports; the loader resolves the symbol
    UNWIND = 6  # format 1.1: an offset into the package's unwind section


class DataSection(StrEnum):
    """The package area a new data object lives in."""

    RODATA = "rodata"
    DATA = "data"
    BSS = "bss"


ELF_FILE_FORMAT = "elf64"
PE_FILE_FORMAT = "pe32+"


@dataclass(frozen=True)
class TargetRecord:
    """The one baseline build a package applies to; the loader proves a target matches it."""

    build_id: bytes  # the baseline's GNU build-id (NT_GNU_BUILD_ID descriptor)
    image_size: int  # span of the baseline's PT_LOAD segments, in bytes
    file_format: str = "elf64"
    machine: str = "x86_64"
    file_sha256: bytes | None = None  # SHA-256 of the whole baseline file, when the builder knew it
    soname_hint: str = ""  # soname or path of the baseline, to help find it in a process
    # A PE32+ baseline only (format 1.4): its preferred ImageBase. Its baseline addresses are RVAs, so a
    # loader adds the image's actual base (ImageBase for a file, the header mapping in a process).
    image_base: int | None = None

    @property
    def is_pe(self) -> bool:
        """Whether the baseline is a Windows PE32+ image (addresses are RVAs; unwind rules are .pdata)."""
        return self.file_format == PE_FILE_FORMAT


@dataclass(frozen=True)
class PatchIdentity:
    """Who this package is: its id, its patch level within the baseline, and what it replaces."""

    package_id: str
    patch_level: int  # 1 for the first package on a baseline; levels are cumulative
    supersedes: str | None = None  # package_id of the level this one replaces, if any
    builder_version: str = ""


@dataclass(frozen=True)
class ReplacedFunction:
    """A baseline function entered through a jump to its replacement in the package's code."""

    name: str
    baseline_address: int  # link address in the baseline ELF
    baseline_size: int
    baseline_sha256: bytes  # SHA-256 of the baseline function's bytes, as linked
    pre_image: bytes  # the exact bytes at baseline_address the loader overwrites with its jump
    code_offset: int  # where the replacement starts in the package's code section
    code_size: int


@dataclass(frozen=True)
class AddedFunction:
    """A function that exists only in the fix; it lives in the package's code section."""

    name: str
    code_offset: int
    code_size: int


@dataclass(frozen=True)
class DataObject:
    """A variable that exists only in the fix; it lives in the package's rodata, data or bss."""

    name: str
    section: DataSection
    offset: int
    size: int


@dataclass(frozen=True)
class ImportRecord:
    """A symbol the package's code needs from outside the baseline image (e.g. libc)."""

    name: str
    version: str | None = None  # symbol version, e.g. "GLIBC_2.2.5"


@dataclass(frozen=True)
class Relocation:
    """One field in a package section that the loader computes once placement is known."""

    section: PackageSection  # which package section holds the field
    offset: int  # where the field starts in that section
    kind: RelocationKind
    space: TargetSpace  # what `target` means
    target: int
    addend: int  # signed 64-bit


@dataclass(frozen=True)
class Package:
    """Everything a .hpkg carries, before encoding and after decoding."""

    target: TargetRecord
    identity: PatchIdentity
    functions: tuple[ReplacedFunction, ...] = ()
    added_functions: tuple[AddedFunction, ...] = ()
    data_objects: tuple[DataObject, ...] = ()
    imports: tuple[ImportRecord, ...] = ()
    allowed_overrides: tuple[str, ...] = ()  # refusal reasons the release engineer overrode
    code: bytes = b""
    rodata: bytes = b""
    data: bytes = b""
    bss_size: int = 0
    relocations: tuple[Relocation, ...] = ()
    # .eh_frame-encoded CIEs and FDEs of package functions, a zero terminator, then their LSDAs
    # (format 1.1; empty when the package carries no unwind rules). See formats/SPEC.md "Unwind section".
    unwind: bytes = b""

    def relocation_counts_by_kind(self) -> dict[str, int]:
        """Number of relocations per ABI kind name, sorted by name, for summaries."""
        return dict(sorted(Counter(r.kind.name for r in self.relocations).items()))

    def relocation_counts_by_space(self) -> dict[str, int]:
        """Number of relocations per target space, sorted by name, for summaries."""
        return dict(sorted(Counter(r.space.name for r in self.relocations).items()))


@dataclass(frozen=True)
class LoadedPackage:
    """A package as read from bytes, with the container facts a verifier or `inspect` reports."""

    package: Package
    format_version: tuple[int, int]
    file_size: int
    manifest_size: int  # size of the compressed manifest in the file
    compressed_size: int  # size of the zstd payload in the file
    payload_size: int  # size of the payload after decompression
    signed: bool
    key_id: bytes | None  # first 8 bytes of SHA-256 of the signer's raw Ed25519 public key
    section_digests: dict[str, bytes] = field(default_factory=dict)  # section name -> SHA-256
    payload_digest: bytes = b""  # SHA-256 of the compressed payload as stored
    signed_message: bytes = b""  # the exact bytes the signature covers
    signature: bytes | None = None
    ignored_fields: tuple[str, ...] = ()  # manifest keys from a newer minor version, not understood
    manifest_json_size: int = 0  # size of the manifest's canonical JSON after decompression
