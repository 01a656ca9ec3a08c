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
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple, NewType

from hpkg.arch.x86_64 import FieldKind
from hpkg.elf.ehframe import Fde

LinkAddress = NewType("LinkAddress", int)
FileOffset = NewType("FileOffset", int)
RuntimeAddress = NewType("RuntimeAddress", int)


@dataclass(frozen=True)
class Section:
    """One ELF section header; its bytes live in Image.section_bytes (read once)."""

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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Import:
    """A symbol another object provides, reached through a PLT entry and/or a GOT slot."""

    name: str
    version: str | None
    plt_address: LinkAddress | None
    got_address: LinkAddress | None

    @property
    def qualified_name(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


@dataclass(frozen=True)
class GotSlot:
    """A GOT entry the dynamic linker fills with a symbol's runtime address."""

    address: LinkAddress
    name: str
    version: str | None
    relocation_type: str


@dataclass(frozen=True)
class ElfRelocation:
    """A relocation entry of an input ELF file (dynamic, or static as kept by -Wl,--emit-relocs), by link
    address; not to be confused with a package's relocation record (hpkg.formats.model.Relocation)."""

    address: LinkAddress
    type: str  # ABI constant without prefix, e.g. "X86_64_PC32"
    symbol: str
    addend: int
    section: str


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
    dynamic_relocations: tuple[ElfRelocation, ...]
    static_relocations: tuple[ElfRelocation, ...]
    section_bytes: dict[str, bytes] = field(repr=False)
    init_functions: tuple[LinkAddress, ...] = ()
    frames: tuple[Fde, ...] = ()  # .eh_frame's FDEs, parsed once when the file is loaded
    stripped: bool = False
    file_sha256: bytes = b""  # of the whole file, taken from the bytes read when it was loaded

    @property
    def has_static_relocations(self) -> bool:
        return bool(self.static_relocations)

    @cached_property
    def eh_frame(self) -> tuple[tuple[LinkAddress, int], ...]:
        """(start, size) of every function an FDE describes, in section order."""
        return tuple((LinkAddress(f.start), f.length) for f in self.frames if f.start and f.length)

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
        start = address - section.address
        return self.section_bytes.get(section.name, b"")[start : start + size]


class FunctionOrigin(enum.Enum):
    """How a function came to be: written in the source, or split/cloned from another by GCC."""

    SOURCE = "source"
    COLD = "cold"  # foo.cold: the unlikely part moved to .text.unlikely
    PART = "part"  # foo.part.0: partial inlining's outlined body
    CLONE = "clone"  # foo.constprop.0, foo.isra.0, foo.lto_priv.0: a specialised copy


@dataclass(frozen=True)
class Function:
    """A function's bounds and bytes; unnamed ones (stripped binaries) are called sub_<hex>."""

    name: str
    address: LinkAddress
    size: int
    section: str
    code: bytes = field(repr=False)
    named: bool = True
    parent: str | None = None  # the origin of a split part or clone (foo for foo.cold)
    origin: FunctionOrigin = FunctionOrigin.SOURCE
    aliases: tuple[str, ...] = ()
    local: bool = False

    @property
    def end(self) -> LinkAddress:
        return LinkAddress(self.address + self.size)


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


@dataclass(frozen=True, eq=False)
class CanonicalFunction:
    """A function with its references and its canonical form (masked bytes + ordered target keys).

    `rows` holds the references as Reference tuples or as plain tuples of the same fields (what
    crosses a process boundary); the diff's hot loops index rows, `references` gives Reference
    records built on first use.
    """

    function: Function
    rows: tuple[tuple, ...] = field(repr=False)
    masked: bytes = field(repr=False)
    digest: str
    instruction_count: int

    @cached_property
    def references(self) -> tuple[Reference, ...]:
        return tuple(
            r if type(r) is Reference else Reference(r[0], r[1], r[2], Target._make(r[3]), r[4], r[5])
            for r in self.rows
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


@dataclass(frozen=True, eq=False)
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
    """A global or static data object that differs between baseline and fix."""

    name: str
    change: DataChangeKind
    old: Symbol | None
    new: Symbol | None


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
