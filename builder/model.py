"""The diff engine's shared data model: frozen records that flow one way, image → functions → diff.

Glossary (the words the code uses):
  baseline / old   the build that is running;  fix / new   the build that carries the change.
  link address     a virtual address as the static linker assigned it (st_value, sh_addr, p_vaddr).
  file offset      a byte position in the ELF file.
  runtime address  link address + load bias of a running process (only the loader knows the bias).
  reference        a field inside a function's bytes that names something else (a call, a rip-relative
                   operand, a jump-table base); it has a location, a width, a kind and a target.
  target           what a reference names, said symbolically so two builds can be compared.
  canonical form   a function's bytes with every reference field masked and padding dropped, plus the
                   ordered list of its targets: two functions with equal forms behave the same.
"""

from __future__ import annotations

import bisect
import enum
import mmap
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple, NewType, overload

from hpkg.arch.x86_64 import RELOCATION_TYPES_BY_NUMBER, FieldKind
from hpkg.elf.ehframe import Fde, parse_eh_frame_records

if TYPE_CHECKING:
    from hpkg.builder.line_table import LineTable
    from hpkg.pe.headers import PeHeaders

LinkAddress = NewType("LinkAddress", int)
FileOffset = NewType("FileOffset", int)
RuntimeAddress = NewType("RuntimeAddress", int)


@dataclass(frozen=True, slots=True)
class Section:
    """One ELF section header; its bytes are read through Image.section_bytes."""

    name: str
    address: LinkAddress
    offset: FileOffset
    size: int
    alloc: bool
    writable: bool
    executable: bool
    nobits: bool
    tls: bool

    @property
    def end(self) -> LinkAddress:
        return LinkAddress(self.address + self.size)


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD (or PT_TLS) program header: the file-offset ↔ link-address mapping."""

    kind: str
    address: LinkAddress
    offset: FileOffset
    file_size: int
    memory_size: int
    flags: str


class SymbolKind(enum.Enum):
    FUNCTION = "function"
    OBJECT = "object"
    TLS = "tls"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Symbol:
    """A .symtab or .dynsym entry that names code or data (section and file symbols are dropped)."""

    name: str
    address: LinkAddress
    size: int
    kind: SymbolKind
    local: bool
    section: str
    version: str | None = None
    dynamic: bool = False
    defined: bool = True


@dataclass(frozen=True, slots=True)
class Import:
    """A symbol another object provides, reached through a PLT entry and/or a GOT slot."""

    name: str
    version: str | None
    plt_address: LinkAddress | None
    got_address: LinkAddress | None

    @property
    def qualified_name(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


@dataclass(frozen=True, slots=True)
class GotSlot:
    """A GOT entry the dynamic linker fills with a symbol's runtime address."""

    address: LinkAddress
    name: str
    version: str | None
    relocation_type: str


@dataclass(frozen=True, slots=True)
class ElfRelocation:
    """A relocation entry of an input ELF file (dynamic, or static as kept by -Wl,--emit-relocs), by link
    address; not to be confused with a package's relocation record (hpkg.formats.model.Relocation)."""

    address: LinkAddress
    type: str  # ABI constant without prefix, e.g. "X86_64_PC32"
    symbol: str
    addend: int
    section: str


class SectionBytes(Mapping[str, bytes]):
    """Each section's bytes by name, read from the file when asked (a fresh `bytes` each time).

    The file is mapped, not read: a large library's code is hundreds of megabytes, of which the
    diff reads each function once. Pages it touched stay counted in the process's resident memory
    until `release` hands them back (they stay in the page cache: reading them again costs a page
    fault, not a disk read). With several sections of one name, the first with contents holds the bytes.
    """

    __slots__ = ("data", "spans")

    def __init__(self, data: bytes | mmap.mmap, spans: dict[str, tuple[int, int]]) -> None:
        self.data = data  # the whole file
        self.spans = spans  # name → (file offset, size)

    def __getitem__(self, name: str) -> bytes:
        offset, size = self.spans[name]
        return self.data[offset : offset + size]

    def __iter__(self) -> Iterator[str]:
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)

    def read(self, name: str, start: int, size: int) -> bytes:
        """`size` bytes from `start` into section `name`'s bytes, cut at their end."""
        span = self.spans.get(name)
        if span is None or start >= span[1]:
            return b""
        offset, length = span
        return self.data[offset + start : offset + min(start + size, length)]

    def release(self) -> None:
        """Drop the file pages this process touched from its resident set (a mapped file only)."""
        if isinstance(self.data, mmap.mmap) and not self.data.closed:
            self.data.madvise(mmap.MADV_DONTNEED)


class AddressRanges(Sequence[tuple[LinkAddress, int]]):
    """(start, size) pairs as two columns: a large library has hundreds of thousands of FDEs."""

    __slots__ = ("starts", "sizes")

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        self.starts = array("Q")
        self.sizes = array("Q")
        for start, size in pairs:
            self.starts.append(start)
            self.sizes.append(size)

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> tuple[LinkAddress, int]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[LinkAddress, int]]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(zip(self.starts[index], self.sizes[index], strict=True))
        return (LinkAddress(self.starts[index]), self.sizes[index])

    def __iter__(self) -> Iterator[tuple[LinkAddress, int]]:
        return zip(self.starts, self.sizes, strict=True)  # type: ignore[return-value]


class ElfRelocations(Sequence[ElfRelocation]):
    """Relocation entries as columns (address, type number, addend, symbol and section by index into
    name lists); an ElfRelocation is made for each entry read. A large library has hundreds of
    thousands, almost all R_X86_64_RELATIVE: `relative` reads those without making records."""

    __slots__ = ("addresses", "types", "addends", "symbols", "sections", "names")

    def __init__(self) -> None:
        self.addresses = array("Q")
        self.types = array("I")
        self.addends = array("q")
        self.symbols = array("I")  # index into `names`
        self.sections = array("I")  # index into `names`
        self.names: list[str] = [""]

    @classmethod
    def of(cls, records: Iterable[ElfRelocation]) -> ElfRelocations:
        """The columns of some records (tests, and relocations a stage picks out)."""
        out = cls()
        for r in records:
            out.append(r.address, relocation_type_number(r.type), r.addend, r.symbol, r.section)
        return out

    def append(self, address: int, kind: int, addend: int, symbol: str, section: str, ids=None) -> None:
        """Add one entry; `ids` (name → index, shared between calls) saves looking names up."""
        if ids is None:
            ids = {n: i for i, n in enumerate(self.names)}
        for name, column in ((symbol, self.symbols), (section, self.sections)):
            index = ids.get(name)
            if index is None:
                index = ids[name] = len(self.names)
                self.names.append(name)
            column.append(index)
        self.addresses.append(address)
        self.types.append(kind)
        self.addends.append(addend)

    def __len__(self) -> int:
        return len(self.addresses)

    def _record(self, i: int) -> ElfRelocation:
        names = self.names
        return ElfRelocation(
            LinkAddress(self.addresses[i]), relocation_type_name(self.types[i]), names[self.symbols[i]],
            self.addends[i], names[self.sections[i]],
        )

    @overload
    def __getitem__(self, index: int) -> ElfRelocation: ...
    @overload
    def __getitem__(self, index: slice) -> list[ElfRelocation]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._record(i) for i in range(len(self))[index]]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._record(index)

    def __iter__(self) -> Iterator[ElfRelocation]:
        return (self._record(i) for i in range(len(self)))

    def of_type(self, type_name: str) -> Iterator[tuple[int, int]]:
        """(address, addend) of every entry of one type ("X86_64_RELATIVE"), in table order."""
        number = RELOCATION_NUMBERS.get(type_name)
        if number is None:
            return iter(())
        return (
            (address, addend)
            for address, kind, addend in zip(self.addresses, self.types, self.addends, strict=True)
            if kind == number
        )

    def records(self, type_names: Iterable[str]) -> Iterator[ElfRelocation]:
        """The entries of some types as records, in table order."""
        numbers = {relocation_type_number(name) for name in type_names}
        return (self._record(i) for i, kind in enumerate(self.types) if kind in numbers)

    def relative(self) -> Iterator[tuple[int, int]]:
        """(address, addend) of every R_X86_64_RELATIVE: a pointer word and the link address it holds."""
        return self.of_type("X86_64_RELATIVE")


def relocation_type_name(number: int) -> str:
    """The psABI name of a relocation type without "R_" ("X86_64_PC32"); unknown numbers by number."""
    known = _TYPE_NAMES.get(number)
    return known if known is not None else f"X86_64_UNKNOWN_{number}"


RELOCATION_NUMBERS: dict[str, int] = {t.short_name: n for n, t in RELOCATION_TYPES_BY_NUMBER.items()}
_TYPE_NAMES: dict[int, str] = {n: name for name, n in RELOCATION_NUMBERS.items()}  # one str object each


def relocation_type_number(name: str) -> int:
    """The number of a relocation type named as `relocation_type_name` names it."""
    known = RELOCATION_NUMBERS.get(name)
    return known if known is not None else int(name.rpartition("_")[2])


@dataclass(frozen=True, eq=False)
class Image:
    """An ELF x86-64 binary as the diff needs it: layout, symbols, imports and the bytes of its sections."""

    path: str
    machine: str
    build_id: str | None
    kind: str  # "executable", "pie-executable" or "shared-library"
    entry: LinkAddress
    sections: tuple[Section, ...]
    segments: tuple[Segment, ...]
    symbols: tuple[Symbol, ...]
    imports: tuple[Import, ...]
    got_slots: tuple[GotSlot, ...]
    dynamic_relocations: ElfRelocations
    static_relocations: ElfRelocations
    section_bytes: SectionBytes = field(repr=False)
    init_functions: tuple[LinkAddress, ...] = ()
    # (start, size) of every function an FDE of .eh_frame describes, in section order, read at load;
    # the FDEs themselves (`frames`) only when the build asks for them.
    eh_frame: AddressRanges = field(default_factory=AddressRanges)
    stripped: bool = False
    file_sha256: bytes = b""  # of the whole file, taken when it was loaded
    debug_path: str | None = None  # the separate debug file the symbols came from, if any
    # A Windows PE32+ image's headers (ImageBase, SizeOfImage, data directories); None for ELF.
    pe_headers: PeHeaders | None = None

    @property
    def is_pe(self) -> bool:
        return self.pe_headers is not None

    @cached_property
    def line_table(self) -> LineTable:
        """The DWARF line table of the build (its debug file's, if it has one), decoded on first use."""
        from hpkg.builder.line_table import LineTable

        return LineTable(self.debug_path or self.path)

    @property
    def has_static_relocations(self) -> bool:
        return bool(self.static_relocations)

    def release_pages(self) -> None:
        """Hand back the file pages reading this image made resident (see SectionBytes.release)."""
        self.section_bytes.release()

    @cached_property
    def frames(self) -> tuple[Fde, ...]:
        """.eh_frame's FDEs, parsed once, on first use: a large library has hundreds of thousands, which
        only the build's unwind tables read (the diff needs `eh_frame`'s ranges)."""
        eh = self.section(".eh_frame")
        if eh is None:
            return ()
        return tuple(parse_eh_frame_records(self.section_bytes.get(".eh_frame", b""), eh.address)[1])

    def section(self, name: str) -> Section | None:
        for section in self.sections:
            if section.name == name:
                return section
        return None

    @cached_property
    def _section_index(self) -> tuple[list[int], list[Section]]:
        placed = sorted(
            (s for s in self.sections if s.alloc and s.size and not s.tls), key=lambda s: s.address
        )
        tls = [s for s in self.sections if s.alloc and s.size and s.tls]
        return [s.address for s in placed], placed + tls

    def section_at(self, address: int) -> Section | None:
        """The allocated section containing a link address (TLS templates only where nothing else is)."""
        starts, placed = self._section_index
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < placed[i].end:
            return placed[i]
        for section in placed[len(starts) :]:
            if section.address <= address < section.end:
                return section
        return None

    def read(self, address: int, size: int) -> bytes:
        """Bytes at a link address (zeros for .bss); empty if the range is outside every section."""
        section = self.section_at(address)
        if section is None:
            return b""
        if section.nobits:
            return bytes(min(size, section.end - address))
        return self.section_bytes.read(section.name, address - section.address, size)


class FunctionOrigin(enum.Enum):
    """How a function came to be: written in the source, or split/cloned from another by GCC."""

    SOURCE = "source"
    COLD = "cold"  # foo.cold: the unlikely part moved to .text.unlikely
    PART = "part"  # foo.part.0: partial inlining's outlined body
    CLONE = "clone"  # foo.constprop.0, foo.isra.0, foo.lto_priv.0: a specialised copy


_ORIGINS: tuple[FunctionOrigin, ...] = tuple(FunctionOrigin)
_ORIGIN_INDEX = {origin: i for i, origin in enumerate(_ORIGINS)}
_NAMED, _LOCAL = 1, 2  # FunctionStore.flags bits; the origin's index is in bits 2-3


class FunctionStore:
    """The functions of one image as columns: a large library has hundreds of thousands, and a
    record each (name, several ints, flags) cost ~280 bytes of objects where these take ~40.

    A `Function` is a small view of one row (with its address). The name of an unnamed function
    (sub_<hex>) is made when asked; parents and aliases, which few functions have, are kept by row.
    """

    __slots__ = (
        "sizes", "starts", "sections", "section_names", "flags", "names", "parents",
        "aliases", "contents", "_section_ids",
    )  # fmt: skip

    def __init__(self, contents: bytes | mmap.mmap) -> None:
        self.contents = contents  # the image's file (or a standalone function's own bytes)
        self.sizes = array("Q")
        self.starts = array("Q")  # where each function's bytes begin in `contents`
        self.sections = array("H")  # index into section_names
        self.section_names: list[str] = []
        self._section_ids: dict[str, int] = {}
        self.flags = bytearray()
        self.names: list[str | None] = []  # None: sub_<hex>
        self.parents: dict[int, str] = {}
        self.aliases: dict[int, tuple[str, ...]] = {}

    @classmethod
    def of_columns(
        cls,
        contents: bytes | mmap.mmap,
        columns: tuple[array, array, array, list[str], bytearray, list[str | None]],
        parents: dict[int, str],
        aliases: dict[int, tuple[str, ...]],
    ) -> FunctionStore:
        """A store of rows made elsewhere (a forked child's): sizes, starts, section ids, section
        names, flags and names, as `add` keeps them."""
        store = cls(contents)
        store.sizes, store.starts, store.sections, store.section_names, store.flags, store.names = columns
        store._section_ids = {name: i for i, name in enumerate(store.section_names)}
        store.parents, store.aliases = parents, aliases
        return store

    def __len__(self) -> int:
        return len(self.sizes)

    def add(
        self,
        name: str,
        address: int,
        size: int,
        section: str,
        named: bool = True,
        parent: str | None = None,
        origin: FunctionOrigin = FunctionOrigin.SOURCE,
        aliases: tuple[str, ...] = (),
        local: bool = False,
        start: int = 0,
    ) -> Function:
        """Append a function and return its view."""
        index = len(self.sizes)
        section_id = self._section_ids.get(section)
        if section_id is None:
            section_id = self._section_ids[section] = len(self.section_names)
            self.section_names.append(section)
        self.sizes.append(size)
        self.starts.append(start)
        self.sections.append(section_id)
        self.flags.append(named * _NAMED | local * _LOCAL | _ORIGIN_INDEX[origin] << 2)
        self.names.append(None if name == f"sub_{address:x}" else name)
        if parent is not None:
            self.parents[index] = parent
        if aliases:
            self.aliases[index] = aliases
        return Function._at(self, index, address)


class Function:
    """A function's bounds and bytes; unnamed ones (stripped binaries) are called sub_<hex>.

    A view of one row of its image's FunctionStore (one per function, made once: code may key on its
    identity). The bytes are not copied: `contents` is the file's bytes (its mapping, shared by
    every function of the image, so not compared) and `code` slices them when asked.
    `Function(name, address, size, section, contents, …)` makes one on its own (package thunks).
    """

    # The address is kept as an object too: every stage keys dicts and sets by it, which would
    # otherwise each hold an int object of their own per function.
    __slots__ = ("_store", "_index", "address")

    def __init__(
        self,
        name: str,
        address: LinkAddress,
        size: int,
        section: str,
        contents: bytes | mmap.mmap,
        named: bool = True,
        parent: str | None = None,
        origin: FunctionOrigin = FunctionOrigin.SOURCE,
        aliases: tuple[str, ...] = (),
        local: bool = False,
        start: int = 0,
    ) -> None:
        store = FunctionStore(contents)
        store.add(name, address, size, section, named, parent, origin, aliases, local, start)
        self._store, self._index, self.address = store, 0, address

    @classmethod
    def _at(cls, store: FunctionStore, index: int, address: int) -> Function:
        view = cls.__new__(cls)
        view._store, view._index, view.address = store, index, address
        return view

    @property
    def name(self) -> str:
        name = self._store.names[self._index]
        return name if name is not None else f"sub_{self.address:x}"

    @property
    def size(self) -> int:
        return self._store.sizes[self._index]

    @property
    def section(self) -> str:
        return self._store.section_names[self._store.sections[self._index]]

    @property
    def contents(self) -> bytes | mmap.mmap:
        return self._store.contents

    @property
    def named(self) -> bool:
        return bool(self._store.flags[self._index] & _NAMED)

    @property
    def parent(self) -> str | None:
        """The origin of a split part or clone (foo for foo.cold)."""
        return self._store.parents.get(self._index)

    @property
    def origin(self) -> FunctionOrigin:
        return _ORIGINS[self._store.flags[self._index] >> 2]

    @property
    def aliases(self) -> tuple[str, ...]:
        return self._store.aliases.get(self._index, ())

    @property
    def local(self) -> bool:
        return bool(self._store.flags[self._index] & _LOCAL)

    @property
    def start(self) -> int:
        """Where the function's bytes begin in `contents` (a file offset, for an image's)."""
        return self._store.starts[self._index]

    @property
    def code(self) -> bytes:
        """The function's bytes (a fresh copy of `size` bytes: take it once per use)."""
        store, i = self._store, self._index
        start = store.starts[i]
        return store.contents[start : start + store.sizes[i]]

    @property
    def end(self) -> LinkAddress:
        return LinkAddress(self.address + self.size)

    def _key(self) -> tuple:
        return (self.name, self.address, self.size, self.section, self.named, self.parent, self.origin,
                self.aliases, self.local, self.start)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Function):
            return NotImplemented
        return self is other or self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Function(name={self.name!r}, address={self.address!r}, size={self.size!r}, "
                f"section={self.section!r}, named={self.named!r}, parent={self.parent!r}, "
                f"origin={self.origin!r}, aliases={self.aliases!r}, local={self.local!r}, "
                f"start={self.start!r})")  # fmt: skip


# How a reference field encodes its target (its relocation recipe): an x86-64 fact, defined once in
# the arch layer; the diff calls it ReferenceKind.
ReferenceKind = FieldKind


class TargetKind(enum.Enum):
    FUNCTION = "function"  # another function of this image (by its name, or its match)
    INTERNAL = "internal"  # an instruction of the same function
    IMPORT = "import"  # a PLT entry or GOT slot of an imported symbol (name@version)
    DATA = "data"  # a data object by symbol
    RODATA = "rodata"  # anonymous read-only data, compared by content
    JUMP_TABLE = "jump-table"  # a switch table: its entries are instructions of this function
    SECTION = "section"  # anything else: a section and an offset into it


class Target(NamedTuple):
    """What a reference names, symbolically; `address` is the link address in this image.

    Target and Reference are NamedTuples rather than dataclasses: an image like libcrypto has
    ~130,000 references, and tuples are several times cheaper to build and to send between processes.
    """

    kind: TargetKind
    name: str
    offset: int
    address: LinkAddress
    content: str | None = None  # digest of referenced read-only bytes (RODATA, read-only DATA)
    entries: tuple[int, ...] = ()  # JUMP_TABLE: entry targets as padding-free offsets in the function

    def key(self) -> tuple:
        """The build-independent identity used for hashing (names of functions and data taken as-is)."""
        if self.kind is TargetKind.INTERNAL:
            return ("i", self.offset)
        if self.kind is TargetKind.JUMP_TABLE:
            return ("j", self.entries)
        if self.kind is TargetKind.RODATA:
            return ("r", self.content, self.offset)
        return (self.kind.value, self.name, self.offset, self.content)


class Reference(NamedTuple):
    """A field of `width` bytes at `location` (offset into the function) that names `target`.

    The field holds `target.address + addend - field address` for PC-relative kinds and
    `target.address + addend` for absolute ones, which is what a package builder must rewrite.
    For INTERNAL targets `target.offset` counts bytes without padding (what the diff compares);
    `internal_offset` is the plain byte offset of the target inside the function.
    """

    location: int
    width: int
    kind: ReferenceKind
    target: Target
    addend: int
    internal_offset: int | None = None


class Instruction(NamedTuple):
    """A decoded instruction: offset into its function, length, mnemonic and operand text.

    Exactly the tuple Capstone's `disasm_lite` yields when a function is decoded at base 0.
    """

    offset: int
    size: int
    mnemonic: str
    operands: str


# The references of a canonical form as five ints each (`CanonicalFunction.columns`): the field's
# location and `width | kind << 8`, then the target: an index into the image's TargetTable, or for an
# in-function target -1 - its padding-free offset, then the addend and the plain in-function offset
# (-1 when none). Tuples cost ~220 bytes a reference, these 20; a large library has millions, and
# a form keeps only the target column (4 bytes each): the rest is found again when asked for.
REFERENCE_COLUMNS = 5
REFERENCE_KINDS: tuple[ReferenceKind, ...] = tuple(ReferenceKind)
# By id(kind): Enum.__hash__ is Python code, and this lookup runs for every reference of both images.
KIND_INDEX: dict[int, int] = {id(kind): i for i, kind in enumerate(REFERENCE_KINDS)}
# Stands for every in-function target where only target kinds matter (`CanonicalFunction.targets`).
IN_FUNCTION = Target(TargetKind.INTERNAL, "", -1, LinkAddress(0))


_TARGET_KINDS: tuple[TargetKind, ...] = tuple(TargetKind)
_TARGET_KIND_INDEX = {kind: i for i, kind in enumerate(_TARGET_KINDS)}
_INT64 = range(-(1 << 63), 1 << 63)


class TargetColumns(Sequence[Target]):
    """An image's distinct targets as columns, a Target made for each entry read: a large library's
    table has hundreds of thousands, at ~200 bytes each as tuples with their ints and names, ~50 here.

    `kinds` lets hot loops pick entries by kind without making them. A function's name is not kept
    where it is sub_<hex> of the function's start (address - offset); offsets and addresses that do
    not fit 64 signed bits are kept aside.
    """

    __slots__ = ("kinds", "names", "offsets", "addresses", "contents", "entries", "_wide")

    def __init__(self) -> None:
        self.kinds = bytearray()
        self.names: list[str | None] = []
        self.offsets = array("q")
        self.addresses = array("q")
        self.contents: list[str | None] = []
        self.entries: dict[int, tuple[int, ...]] = {}  # JUMP_TABLE entries, by index
        self._wide: dict[int, tuple[int, int]] = {}  # (offset, address) that do not fit the arrays

    @classmethod
    def of(cls, targets: Iterable[Target]) -> TargetColumns:
        out = cls()
        for target in targets:
            out.append(target)
        return out

    def append(self, target: Target) -> None:
        kind, name, offset, address, content, entries = target
        index = len(self.kinds)
        self.kinds.append(_TARGET_KIND_INDEX[kind])
        unnamed = kind is TargetKind.FUNCTION and name == f"sub_{address - offset:x}"
        self.names.append(None if unnamed else name)
        if offset in _INT64 and address in _INT64:
            self.offsets.append(offset)
            self.addresses.append(address)
        else:
            self.offsets.append(0)
            self.addresses.append(0)
            self._wide[index] = (offset, address)
        self.contents.append(content)
        if entries:
            self.entries[index] = entries

    def __len__(self) -> int:
        return len(self.kinds)

    def kind(self, index: int) -> TargetKind:
        return _TARGET_KINDS[self.kinds[index]]

    def address(self, index: int) -> int:
        wide = self._wide.get(index) if self._wide else None
        return wide[1] if wide is not None else self.addresses[index]

    @overload
    def __getitem__(self, index: int) -> Target: ...
    @overload
    def __getitem__(self, index: slice) -> list[Target]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if index < 0:
            index += len(self)
        kind = _TARGET_KINDS[self.kinds[index]]
        wide = self._wide.get(index) if self._wide else None
        offset, address = wide if wide is not None else (self.offsets[index], self.addresses[index])
        name = self.names[index]
        if name is None:
            name = f"sub_{address - offset:x}"
        return Target(kind, name, offset, address, self.contents[index], self.entries.get(index, ()))

    def __setitem__(self, index: int, target: Target) -> None:
        """Replace one entry (TargetTable.replace)."""
        rest = TargetColumns.of([target])
        self.kinds[index] = rest.kinds[0]
        self.names[index] = rest.names[0]
        self.offsets[index], self.addresses[index] = rest.offsets[0], rest.addresses[0]
        self._wide.pop(index, None)
        if rest._wide:
            self._wide[index] = rest._wide[0]
        self.contents[index] = rest.contents[0]
        self.entries.pop(index, None)
        if target.entries:
            self.entries[index] = target.entries

    def __iter__(self) -> Iterator[Target]:
        return (self[i] for i in range(len(self)))

    def __getstate__(self) -> tuple:
        """Compact for the pipe from a forked child (see `wire`): arrays not copied, texts once each."""
        from hpkg.builder.wire import array_out, strings_out

        return (
            bytes(self.kinds), strings_out(self.names), array_out(self.offsets), array_out(self.addresses),
            strings_out(self.contents), self.entries, self._wide,
        )  # fmt: skip

    def __setstate__(self, state: tuple) -> None:
        from hpkg.builder.wire import array_in, strings_in

        kinds, names, offsets, addresses, contents, self.entries, self._wide = state
        self.kinds = bytearray(kinds)
        self.names, self.contents = strings_in(names), strings_in(contents)
        self.offsets, self.addresses = array_in(offsets), array_in(addresses)


class TargetTable:
    """The distinct targets other than in-function ones that one image's references name, each once.

    References hold an index into this table; equal targets share one entry and one object.
    `finder` finds a function's references again, in the order canon found them (set by canon once
    the image is canonical): the forms keep only their targets. The index of targets by value is
    needed while references are added: `seal` drops it once the image is canonical (a large
    library's is 15 MiB), and a later `id_of` builds it again.
    """

    __slots__ = ("targets", "_ids", "_sealed", "finder")

    def __init__(self, targets: Iterable[Target] | TargetColumns = ()) -> None:
        # A list while canonicalizing; columns once received from a child (see canon._unpack).
        self.targets: list[Target] | TargetColumns = (
            targets if isinstance(targets, TargetColumns) else list(targets)
        )
        self._ids: dict[Target, int] | None = None
        self._sealed = False  # see seal
        self.finder: Callable[[Function], list[Reference]] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def _index(self) -> dict[Target, int]:
        if self._ids is None:
            self._sealed = False
            self._ids = {}
            for i, target in enumerate(self.targets):
                self._ids.setdefault(target, i)
        return self._ids

    def id_of(self, target: Target) -> int:
        """The index of a target, added if new."""
        ids = self._index()
        found = ids.get(target)
        if found is None:
            found = ids[target] = len(self.targets)
            self.targets.append(target)
        return found

    def replace(self, index: int, target: Target) -> None:
        """Make every reference to entry `index` name `target` instead (once more is known of it).

        A sealed table stays sealed: its index by value is made again only by `id_of`."""
        if self._sealed:
            self.targets[index] = target
            return
        ids = self._index()
        old = self.targets[index]
        if ids.get(old) == index:
            del ids[old]
        ids.setdefault(target, index)
        self.targets[index] = target

    def seal(self) -> None:
        """Drop the index by value (no more targets are added while the diff runs); until a target
        is looked up, `replace` changes entries without making it again."""
        self._ids = None
        self._sealed = True

    def kind_of(self, index: int) -> TargetKind:
        """The kind of entry `index` (without making the Target, when the table is columns)."""
        targets = self.targets
        return targets.kind(index) if isinstance(targets, TargetColumns) else targets[index][0]

    def address_of(self, index: int) -> int:
        targets = self.targets
        return targets.address(index) if isinstance(targets, TargetColumns) else targets[index][3]

    def function_starts(self) -> Iterator[tuple[int, int]]:
        """(index, address) of every entry that names a function at its start (offset 0)."""
        targets = self.targets
        function = TargetKind.FUNCTION
        if isinstance(targets, TargetColumns):
            code = _TARGET_KIND_INDEX[function]
            for i, kind in enumerate(targets.kinds):
                if kind == code and targets.offsets[i] == 0 and i not in targets._wide:
                    yield i, targets.addresses[i]
            for i, (offset, address) in targets._wide.items():
                if targets.kinds[i] == code and offset == 0:
                    yield i, address
            return
        for i, t in enumerate(targets):
            if t[0] is function and t[2] == 0:
                yield i, t[3]


def reference_columns(references: Iterable[Reference], target_ids: Iterable[int]) -> array:
    """The five columns of references whose targets are `target_ids` (their own targets are not read
    except for in-function offsets)."""
    columns = array("i")
    internal = TargetKind.INTERNAL
    kind_index = KIND_INDEX
    for r, tid in zip(references, target_ids, strict=True):
        if r.internal_offset is not None:
            plain = r.internal_offset
        else:
            plain = r.target.offset if r.target.kind is internal else -1
        columns.extend((r.location, r.width | kind_index[id(r.kind)] << 8, tid, r.addend, plain))
    return columns


class FormStore:
    """The canonical forms of one image's functions as columns: digests (16 bytes each), instruction
    counts, masked sizes, and every form's target column in one array (`offsets` says where each
    form's part starts). One array per form cost ~64 bytes plus a digest object and ints; a large
    library has hundreds of thousands of forms and millions of references.
    """

    __slots__ = ("table", "digests", "undecoded", "counts", "sizes", "offsets", "targets", "given")

    def __init__(self, table: TargetTable) -> None:
        self.table = table
        self.digests = bytearray()
        self.undecoded = bytearray()  # while canonicalizing: 1 where the function's tail did not decode
        self.counts = array("I")
        self.sizes = array("I")
        self.offsets = array("Q", [0])
        self.targets = array("i")
        self.given: dict[int, array] = {}  # columns given outright (with_references)

    def __len__(self) -> int:
        return len(self.counts)

    def add(
        self, function: Function, targets: Iterable[int], digest: bytes, count: int, size: int
    ) -> CanonicalFunction:
        """Append a form (a 16-byte digest; a 17th byte marks an undecoded tail) and return its view."""
        index = len(self.counts)
        self.digests += digest[:16]
        self.undecoded.append(len(digest) > 16)
        self.counts.append(count)
        self.sizes.append(size)
        self.targets.extend(targets)
        self.offsets.append(len(self.targets))
        # The same row number as the function's, when they agree: one int object for both views.
        return CanonicalFunction._at(function, self, function._index if function._index == index else index)


class CanonicalFunction:
    """A function with its references and its canonical form (digest of the masked bytes and targets).

    A view of one row of its image's FormStore. A form keeps what each reference names
    (`target_column`: indices into the image's `table`, or -1 - padding-free offset for an
    in-function target); `rows` gives the references as records, found again by the table's
    finder. The masked bytes are not kept either: `digest` stands for them (with the targets' keys),
    `masked` rebuilds them. Only changed functions need either.
    `CanonicalFunction(function, target_column, table, digest, …)` makes one on its own.
    """

    __slots__ = ("function", "_forms", "_index")

    def __init__(
        self,
        function: Function,
        target_column: Iterable[int],
        table: TargetTable,
        digest: bytes,
        instruction_count: int,
        masked_size: int,
        given: array | None = None,
    ) -> None:
        forms = FormStore(table)
        forms.add(function, target_column, digest, instruction_count, masked_size)
        if given is not None:
            forms.given[0] = given
        self.function, self._forms, self._index = function, forms, 0

    @classmethod
    def _at(cls, function: Function, forms: FormStore, index: int) -> CanonicalFunction:
        view = cls.__new__(cls)
        view.function, view._forms, view._index = function, forms, index
        return view

    @property
    def table(self) -> TargetTable:
        return self._forms.table

    @property
    def digest(self) -> bytes:
        at = 16 * self._index
        return bytes(self._forms.digests[at : at + 16])

    @property
    def instruction_count(self) -> int:
        return self._forms.counts[self._index]

    @property
    def masked_size(self) -> int:
        """Bytes of the masked form (without padding)."""
        return self._forms.sizes[self._index]

    @property
    def given(self) -> array | None:
        return self._forms.given.get(self._index)

    @property
    def target_column(self) -> array:
        offsets = self._forms.offsets
        return self._forms.targets[offsets[self._index] : offsets[self._index + 1]]

    @property
    def reference_count(self) -> int:
        offsets = self._forms.offsets
        return offsets[self._index + 1] - offsets[self._index]

    def target_ids(self) -> array:
        """Each reference's target: a table index, or -1 - padding-free offset in this function."""
        return self.target_column

    def targets(self) -> list[Target]:
        """What each reference names, in order; every in-function target is IN_FUNCTION (no offset)."""
        table = self.table.targets
        return [table[t] if t >= 0 else IN_FUNCTION for t in self.target_column]

    def targets_of(self, *kinds: TargetKind) -> list[Target]:
        """The targets of these kinds (not INTERNAL), in order; the others are not made."""
        table = self.table
        targets = table.targets
        return [targets[t] for t in self.target_column if t >= 0 and table.kind_of(t) in kinds]

    @property
    def columns(self) -> array:
        """All five columns of the references (see REFERENCE_COLUMNS), found again."""
        given = self.given
        if given is not None:
            return given
        finder = self.table.finder
        assert finder is not None, "references are found again only once the image is canonical"
        found = finder(self.function)
        column = self.target_column
        if len(found) != len(column):
            raise AssertionError(f"{self.function.name}: references found again differ in number")
        return reference_columns(found, column)

    @property
    def rows(self) -> tuple[Reference, ...]:
        """The references as records (found again on each call: hot loops read `target_column`)."""
        fn = self.function
        table = self.table.targets
        kinds = REFERENCE_KINDS
        internal = TargetKind.INTERNAL
        in_function: dict[int, Target] = {}  # by plain offset, one Target each as canon made them
        out = []
        columns = self.columns
        for i in range(0, len(columns), REFERENCE_COLUMNS):
            location, width_kind, tid, addend, plain = columns[i : i + REFERENCE_COLUMNS]
            if tid >= 0:
                target = table[tid]
            else:
                target = in_function.get(plain)
                if target is None:
                    address = LinkAddress(fn.address + plain)
                    target = in_function[plain] = Target(internal, fn.name, -1 - tid, address)
            kind, width = kinds[width_kind >> 8], width_kind & 0xFF
            out.append(Reference(location, width, kind, target, addend, None if plain < 0 else plain))
        return tuple(out)

    @property
    def references(self) -> tuple[Reference, ...]:
        return self.rows

    def with_references(self, references: Iterable[Reference]) -> CanonicalFunction:
        """The same form with other references (over the same table, which gains any new target)."""
        references = tuple(references)
        internal, table = TargetKind.INTERNAL, self.table
        ids = array("i", (-1 - r.target.offset if r.target.kind is internal else table.id_of(r.target)
                          for r in references))
        given = reference_columns(references, ids)
        fn, count, size = self.function, self.instruction_count, self.masked_size
        return CanonicalFunction(fn, ids, self.table, self.digest, count, size, given)

    @property
    def masked(self) -> bytes:
        """The bytes with every reference field zeroed and padding dropped, rebuilt by decoding again."""
        from hpkg.builder.canon import masked_form  # canon builds on this module

        return masked_form(self)

    def __repr__(self) -> str:
        return (
            f"CanonicalFunction(function={self.function!r}, digest={self.digest!r}, "
            f"instruction_count={self.instruction_count!r}, masked_size={self.masked_size!r})"
        )


class Status(enum.Enum):
    NEW = "new"
    CHANGED = "changed"
    SAME = "same"
    REMOVED = "removed"


class ChangeKind(enum.Enum):
    CODE = "code"  # instructions differ
    REFERENCES = "references"  # same instructions, a target differs (e.g. a changed string literal)
    LINE_NUMBER_ONLY = "line-number-only"  # only __LINE__-like immediates differ: usually left out


@dataclass(frozen=True, eq=False, slots=True)
class FunctionPair:
    """A function of the baseline and its twin in the fix (either may be None), with the verdict."""

    old: CanonicalFunction | None
    new: CanonicalFunction | None
    status: Status
    change_kind: ChangeKind | None = None
    matched_by: str | None = None  # "name", "clone", "hash", "call-graph", "order"

    @property
    def name(self) -> str:
        side = self.old if self.old is not None else self.new
        assert side is not None
        return side.function.name


class DataChangeKind(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    SIZE = "size-changed"
    VALUE = "value-changed"


@dataclass(frozen=True)
class DataChange:
    """A global or static data object that differs between baseline and fix.

    `anonymous`: no symbol names it (a stripped build); `old`/`new` then stand for the bytes of a
    section that differ (`.data+0x10`), see anonymous_data.py.
    """

    name: str
    change: DataChangeKind
    old: Symbol | None
    new: Symbol | None
    anonymous: bool = False


DataKey = tuple[int, str]  # a data object: (link address, name without @VERSION)


def data_key(sym: Symbol) -> DataKey:
    """The identity of a data object within one image: a copy-relocated object that .symtab names
    `stdout@GLIBC_2.2.5` and .dynsym names `stdout` is one object."""
    return (sym.address, sym.name.partition("@")[0])


@dataclass(frozen=True, eq=False)
class DataTwins:
    """Which baseline object each object of the fix is (kpatch's twin, for data), decided once by the diff.

    A fix object without a twin is new, unless baseline statics of the same name (without GCC's
    numbering) were left without a twin too: then it cannot be told which one it is (`candidates`).
    """

    # (baseline, fix) in the baseline's order, then the fix's objects without a twin; None: no twin.
    pairs: tuple[tuple[Symbol | None, Symbol | None], ...]
    ambiguous: dict[DataKey, tuple[str, ...]]  # fix object → the baseline statics it might be

    @cached_property
    def _twins(self) -> dict[DataKey, Symbol]:
        return {data_key(new): old for old, new in self.pairs if old is not None and new is not None}

    def twin(self, new: Symbol) -> Symbol | None:
        """The baseline object a fix object is, if any."""
        return self._twins.get(data_key(new))

    def candidates(self, new: Symbol) -> tuple[str, ...]:
        """The baseline statics a fix object without a twin might be (empty when it is plainly new)."""
        return self.ambiguous.get(data_key(new), ())


@dataclass(frozen=True, eq=False)
class DiffResult:
    """What changed between two images, and every pairing the diff made (kpatch's twin fields).

    Later stages read the twins here and never match again: functions (`function_twins`, and the
    pairs with their statuses), data objects (`data_twins`) and data without symbols (`anonymous_data`).
    """

    old: Image
    new: Image
    mode: str  # "relocations" or "disassembly"
    pairs: tuple[FunctionPair, ...]
    data_changes: tuple[DataChange, ...]
    function_twins: dict[int, int]  # OLD function address → NEW function address
    data_twins: DataTwins
    # NEW address → OLD address of data without a symbol that unchanged functions refer to at the same
    # place in both builds (stripped builds): the only proof the two builds' addresses are one object.
    anonymous_data: dict[int, int]

    @cached_property
    def baseline_twins(self) -> dict[int, Function]:
        """NEW function address → the baseline function it is the twin of."""
        return {p.new.function.address: p.old.function for p in self.pairs if p.old and p.new}

    @property
    def changed(self) -> tuple[FunctionPair, ...]:
        return tuple(p for p in self.pairs if p.status is Status.CHANGED)

    @property
    def added(self) -> tuple[FunctionPair, ...]:
        return tuple(p for p in self.pairs if p.status is Status.NEW)

    @property
    def removed(self) -> tuple[FunctionPair, ...]:
        return tuple(p for p in self.pairs if p.status is Status.REMOVED)

    @property
    def unchanged(self) -> tuple[FunctionPair, ...]:
        return tuple(p for p in self.pairs if p.status is Status.SAME)

    def pair(self, name: str) -> FunctionPair | None:
        """The pair `name` selects: the changed, added or removed pair the diff reports under that
        name (a stripped build's `sub_<hex>` is the baseline's address, the fix's for an added
        function; baseline first where they coincide), else the pair whose baseline function, then
        whose fix function, is called so (or has it as an alias). `old:NAME` and `new:NAME` look on
        that side only: `new:sub_<hex>` selects by the fix's address."""
        prefixed = name.startswith(("old:", "new:")) and not name.startswith(("old::", "new::"))
        side, _, bare = name.partition(":") if prefixed else ("", "", name)
        if not side:
            reported = (p for p in self.pairs if p.status is not Status.SAME and p.name == bare)
            found = next(reported, None)
            if found is not None:
                return found
        for which in ("old", "new") if not side else (side,):
            for p in self.pairs:
                fn = p.old if which == "old" else p.new
                if fn is not None and (fn.function.name == bare or bare in fn.function.aliases):
                    return p
        return None
