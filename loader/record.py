"""The in-target record: what a package changed in a process, kept inside the process itself.

`status` and `revert` run as later, separate invocations, so everything they need lives in the
target: the first page(s) of each package allocation (`/memfd:hpkg-<package id>` in
/proc/PID/maps) hold a record, mapped read-only (r--) apart from the code (r-x) and data (rw-).
The loader writes it through /proc/PID/mem *before* the first patch-site jump, so that a loader
killed at any later moment leaves enough behind to undo what it did.

Layout (little-endian), at the start of the allocation:

| offset | size | field |
|---|---|---|
| 0 | 8 | magic `HPKGREC\\x01` |
| 8 | 4 | format version: 2 (1 was written by hpkg before records were authenticated) |
| 12 | 4 | state: 1 prepared (written, no site switched yet), 2 applied, 3 retired (below) |
| 16 | 4 | body size in bytes |
| 20 | 4 | reserved, 0 |
| 24 | 32 | version 2: the seal, HMAC-SHA256 (below); version 1: SHA-256 of the body |
| 56 | body size | body: canonical JSON (below) |

The target can rewrite this memory, so nothing in a record is believed before its seal is: an
HMAC-SHA256, under this host's record key (loader/record_key.py, which the target cannot read), of
"hpkg-record-2", the memory it lives in (the allocation's address and the device and inode of the
memfd behind it), header bytes 8..24 (version, state, size) and the body. A record copied into other
memory, or with any bit changed, fails; a fork of the process, which maps the same memfd at the same
address, carries a record that holds there too (`RecordSeal`). The switch rewrites bytes 12..56
(state and seal) in one write. Then the body is
validated against limits (nesting depth, sizes, types, counts; `_validate`) and against the
allocation it was found in. Authenticating what revert reads was chosen over re-deriving it from the
package and the image because revert has no package: it must work from what the process carries.
A "retired" record is a reverted package whose memory stays mapped: a Wine process's revert found a word
(on a Windows stack, a stack or in a register) pointing into it, so the sites got their pre-images
back but nothing was unmapped (loader/revert.py); its record page is then made inaccessible
(PROT_NONE, loader/alloc.py), so that /proc/PID/maps alone tells it from applied package memory. A
retired record is not applied for any command: apply, revert and the machine-wide scans pass over it,
`status --pid` lists it as retired. Any other state number is refused as unknown.
A version 1 record (no seal) is "unauthenticated": shown by `status`, refused by apply and verify, and
reverted only with `revert --allow-unauthenticated`, its sites still checked against the image.

The body holds
the package id, patch level and the id it supersedes, the baseline build-id, the image path and
load bias, the allocation and its areas, every patch site (runtime address, pre-image, jump,
replacement), the runtime range of every function of the package's code (the new code that
`revert` must find no thread inside) and of every new variable (carried over to a superseding
level), and, for a package with unwind rules, ld.so's `_dlfo_main` record address with its map_end
and eh_frame words before and after (loader/live_unwind.py), or, for a Windows package under Wine,
ntdll's list of dynamic function tables, its lock and the package's entry in it (`wine_unwind`,
loader/wine_unwind.py). Addresses are fixed-width hex strings,
so the body's size is known before the allocation's address is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from hpkg.errors import RefusedError, TargetError
from hpkg.formats.limits import MAX_NAME_LENGTH, MAX_PRE_IMAGE, MAX_RECORDS
from hpkg.loader.alloc import Allocation, find_allocations
from hpkg.loader.process import Process
from hpkg.loader.record_key import record_key
from hpkg.loader.terminal import printable

MAGIC = b"HPKGREC\x01"
FORMAT_VERSION = 2
UNSEALED_VERSION = 1  # records of an hpkg before the seal: an unkeyed SHA-256 the target can recompute
_HEADER = struct.Struct("<8sIII4x32s")
HEADER_SIZE = _HEADER.size  # 56
STATE_OFFSET = 12
MAX_BODY = 1 << 20
_SEAL_DOMAIN = b"hpkg-record-2"


class RecordState(IntEnum):
    """How far an apply got: prepared (no site switched yet) or applied (switch complete); or retired:
    reverted, its sites back at their pre-images, its memory kept mapped because a word of the process
    may still point into it (never applied again; a later apply places a new allocation)."""

    PREPARED = 1
    APPLIED = 2
    RETIRED = 3


@dataclass(frozen=True)
class SiteRecord:
    """One patch site: its runtime address, the bytes it held before, and the jump written there."""

    function: str
    address: int
    pre_image: bytes
    jump: bytes
    replacement: int


@dataclass(frozen=True)
class CodeRecord:
    """The runtime range of one function of the package's code (replacement or added)."""

    function: str
    start: int
    end: int


@dataclass(frozen=True)
class UnwindRegistration:
    """ld.so's `_dlfo_main` record of a process: where it is, and its two words before and after."""

    address: int  # of the record in ld.so's data
    original_end: int
    original_eh_frame: int
    map_end: int
    eh_frame: int

    @property
    def map_end_address(self) -> int:
        return self.address + 8

    @property
    def eh_frame_address(self) -> int:
        return self.address + 24

    def applied_words(self) -> list[tuple[int, bytes]]:
        """The (address, bytes) writes that register the package's header."""
        return [(self.eh_frame_address, _q(self.eh_frame)), (self.map_end_address, _q(self.map_end))]

    def original_words(self) -> list[tuple[int, bytes]]:
        """The writes that put ld.so's record back as it was at startup."""
        return [
            (self.eh_frame_address, _q(self.original_eh_frame)), (self.map_end_address, _q(self.original_end))
        ]


@dataclass(frozen=True)
class WineUnwindRegistration:
    """A Windows package's function table linked into Wine's list of dynamic function tables (ntdll's
    `dynamic_unwind_list`, under its `dynamic_unwind_section` lock): both addresses, and the entry's,
    which lies in the package memory (loader/wine_unwind.py)."""

    list_head: int
    lock: int
    entry: int


def _q(value: int) -> bytes:
    return struct.pack("<Q", value)


@dataclass(frozen=True)
class PatchRecord:
    """Everything one applied package changed in one image of a process."""

    package_id: str
    patch_level: int
    supersedes: str | None
    build_id: str  # hex
    image_path: str
    load_bias: int
    allocation: Allocation
    areas: tuple[tuple[str, int, int], ...]  # (name, start, end): record, code, rodata, data
    sites: tuple[SiteRecord, ...]
    code: tuple[CodeRecord, ...]
    objects: tuple[CodeRecord, ...] = ()  # the package's new variables: (name, start, end) in rodata/data/bss
    unwind: UnwindRegistration | None = None  # ld.so's record changed so the unwinder finds package FDEs
    wine_unwind: WineUnwindRegistration | None = None  # under Wine: the package's table in ntdll's list

    def to_body(self) -> bytes:
        """The canonical JSON body, addresses as fixed-width hex so the size does not depend on them."""
        document = {
            "package_id": self.package_id,
            "patch_level": self.patch_level,
            "supersedes": self.supersedes,
            "build_id": self.build_id,
            "image_path": self.image_path,
            "load_bias": _hex(self.load_bias),
            "allocation": {"name": self.allocation.name, "start": _hex(self.allocation.start),
                           "size": _hex(self.allocation.size)},
            "areas": [[name, _hex(start), _hex(end)] for name, start, end in self.areas],
            "sites": [
                {"function": s.function, "address": _hex(s.address), "pre_image": s.pre_image.hex(),
                 "jump": s.jump.hex(), "replacement": _hex(s.replacement)}
                for s in self.sites
            ],
            "code": [[c.function, _hex(c.start), _hex(c.end)] for c in self.code],
            "objects": [[o.function, _hex(o.start), _hex(o.end)] for o in self.objects],
        }
        if self.unwind is not None:  # only then: records of packages without unwind rules are unchanged
            u = self.unwind
            words = (u.address, u.original_end, u.original_eh_frame, u.map_end, u.eh_frame)
            document["unwind"] = [_hex(w) for w in words]
        if self.wine_unwind is not None:
            w = self.wine_unwind
            document["wine_unwind"] = [_hex(v) for v in (w.list_head, w.lock, w.entry)]
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, body: bytes) -> PatchRecord:
        """Parse a body written by `to_body`; RecordInvalid on anything else (limits checked first)."""
        d = _validate(_parse(body))
        a = d["allocation"]
        return cls(
            package_id=str(d["package_id"]),
            patch_level=int(d["patch_level"]),
            supersedes=d["supersedes"],
            build_id=str(d["build_id"]),
            image_path=str(d["image_path"]),
            load_bias=int(d["load_bias"], 16),
            allocation=Allocation(int(a["start"], 16), int(a["size"], 16), str(a["name"])),
            areas=tuple((str(n), int(s, 16), int(e, 16)) for n, s, e in d["areas"]),
            sites=tuple(
                SiteRecord(str(s["function"]), int(s["address"], 16), bytes.fromhex(s["pre_image"]),
                           bytes.fromhex(s["jump"]), int(s["replacement"], 16))
                for s in d["sites"]
            ),
            code=tuple(CodeRecord(str(n), int(s, 16), int(e, 16)) for n, s, e in d["code"]),
            objects=tuple(CodeRecord(str(n), int(s, 16), int(e, 16)) for n, s, e in d["objects"]),
            unwind=UnwindRegistration(*(int(v, 16) for v in d["unwind"])) if "unwind" in d else None,
            wine_unwind=(
                WineUnwindRegistration(*(int(v, 16) for v in d["wine_unwind"]))
                if "wine_unwind" in d
                else None
            ),
        )

    def area(self, name: str) -> tuple[int, int]:
        """The runtime [start, end) of one named area."""
        for area_name, start, end in self.areas:
            if area_name == name:
                return start, end
        raise KeyError(name)


def _hex(value: int) -> str:
    return f"{value:#018x}"


class RecordInvalid(ValueError):
    """A record body that is not what `to_body` writes, or is beyond the limits."""


# Limits of a body `to_body` writes: its deepest nesting (object > list > object or list) and its sizes.
MAX_DEPTH = 3
MAX_AREAS = 8
AREA_NAMES = frozenset({"record", "code", "rodata", "data", "unwind-index", "unwind-entry"})
_HEX_WORD = re.compile(r"0x[0-9a-f]{16}")
_HEX_BYTES = re.compile(r"(?:[0-9a-f]{2})*")
_KEYS = frozenset({
    "package_id", "patch_level", "supersedes", "build_id", "image_path", "load_bias", "allocation", "areas",
    "sites", "code", "objects", "unwind", "wine_unwind",
})
_OPTIONAL_KEYS = frozenset({"unwind", "wine_unwind"})
_SITE_KEYS = frozenset({"function", "address", "pre_image", "jump", "replacement"})


def _parse(body: bytes) -> Any:
    """JSON, after proving its nesting is shallow (the parser recurses once per level)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                raise RecordInvalid(f"nested deeper than {MAX_DEPTH} levels")
        elif byte in b"]}":
            depth -= 1
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RecordInvalid(f"not JSON ({type(exc).__name__})") from None


def _text(value: Any, where: str, limit: int = MAX_NAME_LENGTH, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise RecordInvalid(f"{where}: expected text of at most {limit} characters")
    return value


def _word(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX_WORD.fullmatch(value):
        raise RecordInvalid(f"{where}: expected a 64-bit hex word")
    return value


def _bytes(value: Any, where: str, low: int, high: int) -> str:
    if not isinstance(value, str) or not _HEX_BYTES.fullmatch(value) or not low <= len(value) // 2 <= high:
        raise RecordInvalid(f"{where}: expected {low}..{high} bytes in hex")
    return value


def _list(value: Any, where: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise RecordInvalid(f"{where}: expected a list of at most {limit} entries")
    return value


def _range(value: Any, where: str, names: frozenset[str] | None = None) -> None:
    """[name, start, end] with start <= end."""
    if not isinstance(value, list) or len(value) != 3:
        raise RecordInvalid(f"{where}: expected [name, start, end]")
    name = _text(value[0], f"{where} name")
    if names is not None and name not in names:
        raise RecordInvalid(f"{where}: unknown area")
    if int(_word(value[1], f"{where} start"), 16) > int(_word(value[2], f"{where} end"), 16):
        raise RecordInvalid(f"{where}: ends before it starts")


def _validate(d: Any) -> dict[str, Any]:
    """Every field of a parsed body has the type, size and count `to_body` gives it; RecordInvalid if not."""
    if not isinstance(d, dict) or not _KEYS - _OPTIONAL_KEYS <= d.keys() <= _KEYS:
        raise RecordInvalid("not a record body (fields missing or unknown)")
    _text(d["package_id"], "package_id", 256)
    level = d["patch_level"]
    if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level < 1 << 32:
        raise RecordInvalid("patch_level: expected a positive 32-bit number")
    if d["supersedes"] is not None:
        _text(d["supersedes"], "supersedes", 256)
    _bytes(d["build_id"], "build_id", 1, 64)
    _text(d["image_path"], "image_path", 4096)
    _word(d["load_bias"], "load_bias")
    a = d["allocation"]
    if not isinstance(a, dict) or a.keys() != {"name", "start", "size"}:
        raise RecordInvalid("allocation: expected name, start and size")
    _text(a["name"], "allocation name", 256)
    _word(a["start"], "allocation start")
    _word(a["size"], "allocation size")
    for n, area in enumerate(_list(d["areas"], "areas", MAX_AREAS)):
        _range(area, f"areas[{n}]", AREA_NAMES)
    for n, site in enumerate(_list(d["sites"], "sites", MAX_RECORDS)):
        if not isinstance(site, dict) or site.keys() != _SITE_KEYS:
            raise RecordInvalid(f"sites[{n}]: expected function, address, pre_image, jump, replacement")
        _text(site["function"], f"sites[{n}] function")
        _word(site["address"], f"sites[{n}] address")
        _bytes(site["pre_image"], f"sites[{n}] pre_image", 1, MAX_PRE_IMAGE)
        _bytes(site["jump"], f"sites[{n}] jump", 1, len(site["pre_image"]) // 2)
        _word(site["replacement"], f"sites[{n}] replacement")
    for name in ("code", "objects"):
        for n, entry in enumerate(_list(d[name], name, MAX_RECORDS)):
            _range(entry, f"{name}[{n}]")
    for name, count in (("unwind", 5), ("wine_unwind", 3)):
        if name in d:
            _words(d[name], name, count)
    return d


def _words(value: object, name: str, count: int) -> None:
    """`value` is a list of exactly `count` machine words (an optional registration's fields)."""
    words = _list(value, name, count)
    if len(words) != count:
        raise RecordInvalid(f"{name}: expected {count} words")
    for n, word in enumerate(words):
        _word(word, f"{name}[{n}]")


def _inside(record: PatchRecord, allocation: Allocation) -> str:
    """Why a well-formed record does not describe the allocation it was found in ("" when it does)."""
    own = record.allocation
    if (own.start, own.size, own.name) != (allocation.start, allocation.size, allocation.name):
        return f"it describes memory at {own.start:#x}, not the allocation it is in"
    code = ((f"code of {c.function}", c.start, c.end) for c in record.code)
    for name, start, end in (*record.areas, *code):
        if not allocation.start <= start <= end <= allocation.end:
            return f"its {name} area lies outside its allocation"
    if record.wine_unwind is not None:
        names = {name for name, _, _ in record.areas}
        start, end = record.area("unwind-entry") if "unwind-entry" in names else (0, 0)
        if not start <= record.wine_unwind.entry < end:
            return "its function table entry lies outside its unwind-entry area"
    return ""


@dataclass(frozen=True)
class RecordSeal:
    """What a record's seal binds: this host's key, and the memory the record lives in — the
    allocation's address and the memfd behind it (device and inode, from /proc/PID/maps).

    Not the pid: a fork of a patched process carries the same patched code and the same record in
    the same memfd mapping (copy-on-write), and `status`/`revert` must be able to take it out there
    too. Another process cannot have that memfd mapped at that address unless it was given it,
    which takes the rights to change the first process's memory anyway; and a record copied into
    any other memory fails.
    """

    key: bytes
    process: Process

    @classmethod
    def of(cls, process: Process) -> RecordSeal:
        return cls(record_key(), process)

    def _backing(self, allocation_start: int) -> tuple[bytes, int]:
        """(device, inode) of the mapping at the allocation's start; empty if there is none."""
        for mapping in self.process.maps():
            if mapping.start == allocation_start:
                return mapping.dev.encode("ascii", "replace"), mapping.inode
        return b"", 0

    def mac(self, allocation_start: int, header: bytes, body: bytes) -> bytes:
        """HMAC-SHA256 of the domain, the memory (memfd and address), header bytes 8..24 and the body."""
        dev, inode = self._backing(allocation_start)
        binding = struct.pack("<QQ", inode, allocation_start) + dev.ljust(16, b"\0")[:16]
        return hmac.new(self.key, _SEAL_DOMAIN + binding + header[8:24] + body, hashlib.sha256).digest()


def encode(record: PatchRecord, state: RecordState, seal: RecordSeal) -> bytes:
    """Header and body, sealed, ready to be written at the start of the allocation."""
    body = record.to_body()
    unsealed = _HEADER.pack(MAGIC, FORMAT_VERSION, state, len(body), bytes(32))
    return _HEADER.pack(
        MAGIC, FORMAT_VERSION, state, len(body), seal.mac(record.allocation.start, unsealed, body)
    ) + body


def sealed_state(record: PatchRecord, state: RecordState, seal: RecordSeal) -> bytes:
    """Header bytes STATE_OFFSET..HEADER_SIZE (state, size and the new seal) for `state`: one write."""
    return encode(record, state, seal)[STATE_OFFSET:HEADER_SIZE]


def encoded_size(record: PatchRecord) -> int:
    """The size of `encode(record, …)`, the same for any addresses."""
    return HEADER_SIZE + len(record.to_body())


class RecordTrust(StrEnum):
    """How far hpkg believes what an allocation's record says."""

    AUTHENTICATED = "authenticated"  # sealed under this host's key for this process, and well-formed
    UNAUTHENTICATED = "unauthenticated"  # written by an older hpkg (no seal), well-formed
    REFUSED = "refused"  # a record that fails its seal, digest or validation: changed by someone else
    ABSENT = "absent"  # no record: a loader stopped before writing one


@dataclass(frozen=True)
class FoundRecord:
    """An hpkg allocation of a process and what its record says (None unless authenticated or legacy)."""

    allocation: Allocation
    record: PatchRecord | None
    state: RecordState | None
    problem: str  # why `record` is None, else ""
    trust: RecordTrust = RecordTrust.AUTHENTICATED

    @property
    def retired(self) -> bool:
        """A reverted package whose memory was kept mapped: applied nowhere, never acted on again."""
        return self.state is RecordState.RETIRED


def _absent(allocation: Allocation, problem: str) -> FoundRecord:
    return FoundRecord(allocation, None, None, problem, RecordTrust.ABSENT)


def _refused(allocation: Allocation, problem: str) -> FoundRecord:
    return FoundRecord(allocation, None, None, problem, RecordTrust.REFUSED)


def read_record(process: Process, allocation: Allocation, seal: RecordSeal) -> FoundRecord:
    """Read a record, authenticate it before believing any field, then validate it."""
    try:
        head = process.read(allocation.start, HEADER_SIZE)
    except TargetError as exc:
        return _absent(allocation, str(exc))
    magic, version, state, size, digest = _HEADER.unpack(head)
    if magic != MAGIC:
        return _absent(allocation, "no record (a loader stopped before writing it?)")
    if version not in (FORMAT_VERSION, UNSEALED_VERSION):
        return _refused(allocation, f"record format {version}, this hpkg reads {FORMAT_VERSION}")
    if not 0 < size <= MAX_BODY or allocation.start + HEADER_SIZE + size > allocation.end:
        return _refused(allocation, f"record body size {size} out of bounds")
    try:
        body = process.read(allocation.start + HEADER_SIZE, size)
    except TargetError as exc:
        return _refused(allocation, str(exc))
    if version == FORMAT_VERSION:
        if not hmac.compare_digest(seal.mac(allocation.start, head, body), digest):
            why = "record fails authentication (changed inside the process, or sealed under another key)"
            return _refused(allocation, why)
        trust = RecordTrust.AUTHENTICATED
    else:
        if hashlib.sha256(body).digest() != digest:
            return _refused(allocation, "record damaged: SHA-256 of its body does not match")
        trust = RecordTrust.UNAUTHENTICATED
    try:
        record = PatchRecord.from_body(body)
        record_state = RecordState(state)
    except RecordInvalid as exc:
        return _refused(allocation, f"record malformed: {exc}")
    except ValueError:
        return _refused(allocation, f"record state {state} is unknown")
    problem = _inside(record, allocation)
    if problem:
        return _refused(allocation, f"record malformed: {problem}")
    return FoundRecord(allocation, record, record_state, "", trust)


def find_records(process: Process, seal: RecordSeal | None = None) -> list[FoundRecord]:
    """Every hpkg allocation of a process with its record, in address order."""
    seal = seal if seal is not None else RecordSeal.of(process)
    allocations = sorted(find_allocations(process.maps()), key=lambda a: a.start)
    return [read_record(process, allocation, seal) for allocation in allocations]


def usable_records(
    found: list[FoundRecord], pid: int, allow_unauthenticated: bool = False
) -> list[FoundRecord]:
    """The records an apply, verify or revert may act on; RefusedError (exit 4) when any is refused, or
    unauthenticated without `allow_unauthenticated`. Allocations without a record pass through."""
    for f in found:
        if f.trust is RecordTrust.REFUSED:
            raise RefusedError(
                f"process {pid}: hpkg cannot trust its record at {f.allocation.start:#x}:"
                f" {printable(f.problem)}; nothing written (restart the process to get rid of it)"
            )
        if f.trust is RecordTrust.UNAUTHENTICATED and not allow_unauthenticated:
            raise RefusedError(
                f"process {pid} carries an unauthenticated hpkg record at {f.allocation.start:#x} (written by"
                " an older hpkg, without a seal); nothing written. `hpkg revert --allow-unauthenticated`"
                " takes it out after checking its sites against the image"
            )
    return found
