"""Name the thing at a link address of one image: a function, an import, a data object or bytes.

One TargetResolver per image serves both reference sources (relocations and disassembly), so a
field found either way resolves to the same symbolic Target.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import struct
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

from hpkg.builder.model import Function, GotSlot, Image, Import, LinkAddress, SymbolKind, Target, TargetKind

# Marks a branch target in code that no known function covers; canon turns these into functions.
CODE_SUFFIX = ":code"
_STRING_LIMIT = 4096
# DATA content naming the zero-size markers at the target's address (see _markers).
ALIASES = "aliases:"

_NOT_TEXT = re.compile(rb"[^\x20-\x7e\t\n\r]")


def _is_text(data: bytes) -> bool:
    """Whether bytes are printable ASCII text (the body of a C string literal)."""
    return _NOT_TEXT.search(data) is None


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _markers(image: Image) -> dict[int, tuple[str, ...]]:
    """Link address → the zero-size markers there: empty objects, empty sections, data section bounds.

    The linker puts a marker such as __TMC_END__ (the end of an empty .tm_clone_table) on whatever
    comes next, so one address has two names and which one a build's symbol order yields depends
    on the layout; the markers are the identity that both builds share (strip keeps the sections).
    """
    found: dict[int, set[str]] = {}
    for sym in image.symbols:
        if sym.kind is SymbolKind.OBJECT and sym.defined and sym.section and sym.address and not sym.size:
            found.setdefault(sym.address, set()).add(sym.name.partition("@")[0])
    for section in image.sections:
        if not section.alloc or section.tls or not section.address:
            continue
        if not section.size:
            found.setdefault(section.address, set()).add(f"section:{section.name}")
        elif section.writable and not section.executable:
            # strip drops the empty .tm_clone_table; its end, __TMC_END__, is still the end of .data.
            found.setdefault(section.end, set()).add(f"end:{section.name}")
            # The first object of a section (crt's __dso_handle opens .data) may or may not sit right
            # after the previous section's end, depending on alignment.
            found.setdefault(section.address, set()).add(f"start:{section.name}")
    return {address: tuple(sorted(names)) for address, names in found.items()}


class RelocatedWords:
    """The pointer words an image's R_X86_64_RELATIVE relocations fill, sorted by address, with the
    link address each will hold (of several relocations of one word, the last counts, as ld.so
    applies them). Two arrays: a large library has hundreds of thousands."""

    __slots__ = ("addresses", "values")

    def __init__(self, relative: Iterable[tuple[int, int]]) -> None:
        # The linker sorts them by address (`-z combreloc`; RELR is sorted by construction): then
        # they go straight into the arrays. Only a table out of order takes a dict of every word
        # (~100 bytes each: tens of MiB for a large library, made once per image and process).
        self.addresses, self.values = array("Q"), array("q")
        words = iter(relative)
        previous = -1
        for address, value in words:
            if address <= previous:
                rest = chain(zip(self.addresses, self.values, strict=True), ((address, value),), words)
                last = dict(rest)
                self.addresses = array("Q", sorted(last))
                self.values = array("q", (last[a] for a in self.addresses))
                return
            self.addresses.append(address)
            self.values.append(value)
            previous = address

    def index(self, address: int) -> int | None:
        """The number of the word at `address`, if a relocation fills one there."""
        i = bisect.bisect_left(self.addresses, address)
        return i if i < len(self.addresses) and self.addresses[i] == address else None


@dataclass
class TargetResolver:
    """Names the thing at a link address of one image: a function, an import, a data object or bytes."""

    image: Image
    functions: tuple[Function, ...]

    def __post_init__(self) -> None:
        self._starts = [f.address for f in self.functions]
        self._plt: dict[int, Import] = {i.plt_address: i for i in self.image.imports if i.plt_address}
        self._got: dict[int, Import | GotSlot] = {
            i.got_address: i for i in self.image.imports if i.got_address
        }
        # A symbol can own several GOT slots (JUMP_SLOT for calls, GLOB_DAT for its address); the
        # slot itself stands for its import until one is asked for (a large library has ~50,000).
        for slot in self.image.got_slots:
            if slot.address not in self._got and slot.relocation_type != "X86_64_TPOFF64":
                self._got[slot.address] = slot
        objects = [
            s
            for s in self.image.symbols
            if s.kind is SymbolKind.OBJECT and s.defined and s.section and s.address  # TLS values are offsets
        ]
        # At one address, a sized object wins over a zero-size marker: the linker's __TMC_END__
        # (empty .tm_clone_table) lands on whatever object opens .bss next, e.g. a copy of stdout.
        objects.sort(key=lambda s: (s.address, s.size == 0, s.dynamic, s.local, s.name))
        self._objects = []
        for sym in objects:
            if self._objects and self._objects[-1].address == sym.address:
                continue  # the same object under a second name (a .dynsym copy or an alias)
            self._objects.append(sym)
        self._object_starts = [s.address for s in self._objects]
        self._markers = _markers(self.image)
        self._sections = sorted(
            (s for s in self.image.sections if s.alloc and s.size and not s.tls), key=lambda s: s.address
        )
        self._section_starts = [s.address for s in self._sections]
        self.non_pic = self.image.kind == "executable"
        alloc = [s for s in self._sections]
        self.low = min((s.address for s in alloc), default=0)
        self.high = max((s.end for s in alloc), default=0)
        # By address << 16 | access size: an int key costs half a tuple's, and every external
        # reference of the image looks one up.
        self._cache: dict[int, Target] = {}
        self._words: RelocatedWords | None = None
        # Per relocated pointer word (by its number), its description once read: a list rather than a
        # dict by number (a large library has hundreds of thousands of words, and a dict entry with its
        # int key costs ~80 bytes against 8), each distinct text kept once ("fn:sub" stands for most).
        self._described: list[str | None] = []
        self._texts: dict[str, str] = {}
        self._pointer_targets: array | None = None
        self.code_sections = frozenset(s.name for s in self._sections if s.executable)

    def function_at(self, address: int) -> Function | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            f = self.functions[i]
            if f.address <= address < f.address + max(f.size, 1):
                return f
        return None

    def section_at(self, address: int):
        i = bisect.bisect_right(self._section_starts, address) - 1
        if i >= 0 and address < self._sections[i].end:
            return self._sections[i]
        return None

    def object_at(self, address: int):
        i = bisect.bisect_right(self._object_starts, address) - 1
        if i >= 0:
            sym = self._objects[i]
            if sym.address <= address < sym.address + max(sym.size, 1):
                return sym
        return None

    def is_import_slot(self, address: int) -> bool:
        return address in self._got

    def rodata_content(self, address: int, access_size: int, boundaries: list[int]) -> str:
        """A digest of the read-only bytes a reference reads: `access_size` bytes for a load, else a
        C string up to its NUL (also "" at another literal's terminator), else the bytes up to the
        next referenced address or data symbol."""
        if access_size:
            return self._digest_with_pointers(address, self.image.read(address, access_size))
        window = self.image.read(address, _STRING_LIMIT)
        nul = window.find(b"\0")
        if nul > 0 and not self._in_pointer_word(address) and _is_text(window[:nul]):
            return _digest(window[: nul + 1])
        before = self.image.read(address - 1, 1)
        if nul == 0 and before and _is_text(before):
            # The terminator of a string ("" merged into another literal's tail): the code sees "".
            # A table never starts right after a printable byte: the byte before it is a NUL or fill.
            return _digest(b"\0")
        limit = _STRING_LIMIT
        i = bisect.bisect_right(boundaries, address)
        if i < len(boundaries):
            limit = max(1, min(limit, boundaries[i] - address))
        for starts in (self._object_starts, self._starts, self._pointed_to()):
            i = bisect.bisect_right(starts, address)
            if i < len(starts):
                limit = max(1, min(limit, starts[i] - address))
        relative = self._code_offsets(address, window[:limit])
        if relative is not None:
            return _digest(relative.encode())
        return self._digest_with_pointers(address, window[:limit])

    def _code_offsets(self, address: int, data: bytes) -> str | None:
        """A table of int32 offsets from its own start to code (a switch table no dispatch sequence
        revealed, or an assembly-written one), said as function-relative positions; else None."""
        keys = []
        for i in range(0, len(data) - 3, 4):
            value = struct.unpack_from("<i", data, i)[0]
            function = self.function_at(address + value)
            if function is None:
                break
            name = function.name if function.named else "sub"
            keys.append(f"{name}+{address + value - function.address}")
        if len(keys) < 2:
            return None
        return ",".join(keys) + "|" + data[4 * len(keys) :].hex()

    def _pointed_to(self) -> array:
        """Sorted addresses that relocated pointer words hold: starts of tables and strings."""
        if self._pointer_targets is None:
            relative = self.image.dynamic_relocations.relative()
            self._pointer_targets = array("q", sorted({addend for _, addend in relative}))
        return self._pointer_targets

    def _digest_with_pointers(self, address: int, data: bytes) -> str:
        """Digest read-only bytes with each relocated pointer word replaced by what it points to.

        RELRO tables (.data.rel.ro) hold link addresses that shift from build to build; a function
        pointer is kept as the function's name (or "sub" for an unnamed one), anything else as
        the section it points into.
        """
        words = self._pointer_words()
        if not words.addresses or not data:
            return _digest(data)
        addresses = words.addresses
        first = bisect.bisect_left(addresses, address)
        last = bisect.bisect_left(addresses, address + len(data) - 7)
        if first >= last:
            return _digest(data)
        raw = bytearray(data)
        described = []
        for i in range(first, last):
            offset = addresses[i] - address
            raw[offset : offset + 8] = bytes(8)
            described.append(f"{offset}:{self._describe_word(i)}")
        return _digest(bytes(raw) + ",".join(described).encode())

    def _in_pointer_word(self, address: int) -> bool:
        """Whether an address falls inside a relocated pointer word (so its bytes are no string)."""
        addresses = self._pointer_words().addresses
        i = bisect.bisect_right(addresses, address) - 1
        return i >= 0 and address < addresses[i] + 8

    def _describe_pointee(self, address: int) -> str:
        """What a data pointer points at: a C string by its text, else the section it points into."""
        section = self.section_at(address)
        if section is None:
            return "at:?"
        if not section.writable and not section.executable and not section.nobits:
            text = self.image.read(address, 256)
            nul = text.find(b"\0")
            if nul >= 0 and _is_text(text[:nul]):
                return "str:" + _digest(text[:nul])
        return f"at:{section.name}"

    def _pointer_words(self) -> RelocatedWords:
        if self._words is None:
            self._words = RelocatedWords(self.image.dynamic_relocations.relative())
        return self._words

    def _describe_word(self, i: int) -> str:
        """What the relocated pointer word number `i` points to (described once, when first read)."""
        described = self._described
        if not described:
            described.extend([None] * len(self._pointer_words().addresses))
        text = described[i]
        if text is None:
            addend = self._pointer_words().values[i]
            function = self.function_at(addend)
            if function is not None and function.address == addend:
                text = f"fn:{function.name if function.named else 'sub'}"
            else:
                text = self._describe_pointee(addend)
            text = described[i] = self._texts.setdefault(text, text)
        return text

    def forget_resolved(self) -> None:
        """Drop the cache of targets resolved so far (each address is resolved again if asked)."""
        self._cache = {}

    def resolve(self, address: int, within: Function, access_size: int = 0) -> Target:
        """The symbolic target of a link address (cached per address for everything but INTERNAL)."""
        if within.address <= address < within.address + within.size:
            return Target(TargetKind.INTERNAL, within.name, address - within.address, LinkAddress(address))
        key = address << 16 | access_size
        target = self._cache.get(key)
        if target is None:
            target = self._cache[key] = self._resolve(address, access_size)
        return target

    def _resolve(self, address: int, access_size: int = 0) -> Target:
        """The symbolic target of a link address outside the referencing function (hence cacheable).

        Anonymous read-only data gets a placeholder content (`?<access size>`): its digest needs every
        referenced address of the image as boundaries, so canon fills it in after all functions.
        """
        address = LinkAddress(address)
        imported = self._plt.get(address) or self._got.get(address)
        if isinstance(imported, GotSlot):
            imported = Import(imported.name, imported.version, None, imported.address)
        if imported is not None:
            return Target(TargetKind.IMPORT, imported.qualified_name, 0, address)
        function = self.function_at(address)
        if function is not None:
            return Target(TargetKind.FUNCTION, function.name, address - function.address, address)
        section = self.section_at(address)
        if section is not None and section.name.startswith(".got"):
            # A GOT slot the dynamic linker fills with a local address (R_X86_64_RELATIVE): it is
            # named by what it will point to.
            i = self._pointer_words().index(address)
            word = self._describe_word(i) if i is not None else None
            if word is not None:
                return Target(TargetKind.SECTION, f"{section.name}:{word}", 0, address)
        sym = self.object_at(address)
        markers = self._markers.get(address)
        if sym is not None:
            content = None
            if section is not None and not section.writable and not section.nobits:
                content = _digest(self.image.read(sym.address, max(sym.size, 1)))
            elif markers and sym.address == address:
                content = ALIASES + ",".join(markers)
            return Target(TargetKind.DATA, sym.name, address - sym.address, address, content)
        if markers:
            return Target(TargetKind.DATA, markers[0], 0, address, ALIASES + ",".join(markers))
        if section is None:
            before = self.section_at(address - 1)
            if before is not None:  # one past the end of a section, as linker-made end symbols are
                return Target(TargetKind.SECTION, f"{before.name}:end", 0, address)
            return Target(TargetKind.SECTION, "", address, address)
        # Constants between functions (hand-written assembly keeps its tables in .text) and RELRO
        # tables are compared by content like .rodata.
        read_only = not section.writable or section.name.startswith(".data.rel.ro")
        if read_only and not section.nobits:
            return Target(TargetKind.RODATA, section.name, 0, address, f"?{access_size}")
        return Target(TargetKind.SECTION, section.name, address - section.address, address)
