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
| 8 | 4 | format version (1) |
| 12 | 4 | state: 1 prepared (written, no site switched yet), 2 applied |
| 16 | 4 | body size in bytes |
| 20 | 4 | reserved, 0 |
| 24 | 32 | SHA-256 of the body |
| 56 | body size | body: canonical JSON (below) |

The state is outside the digest so that the switch flips it with one 4-byte write. The body holds
the package id, patch level and the id it supersedes, the baseline build-id, the image path and
load bias, the allocation and its areas, every patch site (runtime address, pre-image, jump,
replacement), the runtime range of every function of the package's code (the new code that
`revert` must find no thread inside) and of every new variable (carried over to a superseding
level), and, for a package with unwind rules, ld.so's `_dlfo_main` record address with its map_end
and eh_frame words before and after (loader/live_unwind.py). Addresses are fixed-width hex strings,
so the body's size is known before the allocation's address is.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from enum import IntEnum

from hpkg.errors import TargetError
from hpkg.loader.alloc import Allocation, find_allocations
from hpkg.loader.process import Process

MAGIC = b"HPKGREC\x01"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIII4x32s")
HEADER_SIZE = _HEADER.size  # 56
STATE_OFFSET = 12
MAX_BODY = 1 << 20


class RecordState(IntEnum):
    """How far an apply got: prepared (no site switched yet) or applied (switch complete)."""

    PREPARED = 1
    APPLIED = 2


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
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, body: bytes) -> PatchRecord:
        """Parse a body written by `to_body`; ValueError/KeyError/TypeError on anything else."""
        d = json.loads(body)
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
        )

    def area(self, name: str) -> tuple[int, int]:
        """The runtime [start, end) of one named area."""
        for area_name, start, end in self.areas:
            if area_name == name:
                return start, end
        raise KeyError(name)


def _hex(value: int) -> str:
    return f"{value:#018x}"


def encode(record: PatchRecord, state: RecordState) -> bytes:
    """Header and body, ready to be written at the start of the allocation."""
    body = record.to_body()
    return _HEADER.pack(MAGIC, FORMAT_VERSION, state, len(body), hashlib.sha256(body).digest()) + body


def encoded_size(record: PatchRecord) -> int:
    """The size of `encode(record, …)`, the same for any addresses."""
    return HEADER_SIZE + len(record.to_body())


def state_bytes(state: RecordState) -> bytes:
    """The 4 bytes at STATE_OFFSET for `state`."""
    return struct.pack("<I", state)


@dataclass(frozen=True)
class FoundRecord:
    """An hpkg allocation of a process and what its record says (None when unreadable or damaged)."""

    allocation: Allocation
    record: PatchRecord | None
    state: RecordState | None
    problem: str  # why `record` is None, else ""


def read_record(process: Process, allocation: Allocation) -> FoundRecord:
    """Read and check the record at the start of one allocation."""
    try:
        head = process.read(allocation.start, HEADER_SIZE)
    except TargetError as exc:
        return FoundRecord(allocation, None, None, str(exc))
    magic, version, state, size, digest = _HEADER.unpack(head)
    if magic != MAGIC:
        return FoundRecord(allocation, None, None, "no record (a loader stopped before writing it?)")
    if version != FORMAT_VERSION:
        problem = f"record format {version}, this hpkg reads {FORMAT_VERSION}"
        return FoundRecord(allocation, None, None, problem)
    if not 0 < size <= MAX_BODY or allocation.start + HEADER_SIZE + size > allocation.end:
        return FoundRecord(allocation, None, None, f"record body size {size} out of bounds")
    try:
        body = process.read(allocation.start + HEADER_SIZE, size)
    except TargetError as exc:
        return FoundRecord(allocation, None, None, str(exc))
    if hashlib.sha256(body).digest() != digest:
        return FoundRecord(allocation, None, None, "record damaged: SHA-256 of its body does not match")
    try:
        record = PatchRecord.from_body(body)
        record_state = RecordState(state)
    except (ValueError, KeyError, TypeError) as exc:
        return FoundRecord(allocation, None, None, f"record unreadable: {exc}")
    return FoundRecord(allocation, record, record_state, "")


def find_records(process: Process) -> list[FoundRecord]:
    """Every hpkg allocation of a process with its record, in address order."""
    allocations = sorted(find_allocations(process.maps()), key=lambda a: a.start)
    return [read_record(process, allocation) for allocation in allocations]
