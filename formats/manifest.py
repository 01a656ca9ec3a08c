"""The manifest: canonical JSON (sorted keys, no whitespace, ASCII only) describing a package's contents.

Canonical means one byte string per manifest: the reader re-encodes what it parsed and refuses the
manifest unless the bytes are identical, so a signature over these bytes has exactly one meaning.
In the file the JSON is stored zstd-compressed with the format's dictionary (see compression.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hpkg.errors import PackageError
from hpkg.formats import limits
from hpkg.formats.header import PE_MINOR
from hpkg.formats.model import (
    AddedFunction,
    DataObject,
    DataSection,
    ImportRecord,
    Package,
    PatchIdentity,
    ReplacedFunction,
    TargetRecord,
)
from hpkg.formats.reloctable import RECORD_SIZE
from hpkg.formats.validate import U32_MAX, U64_MAX, check_int, check_text

SECTION_NAMES = ("code", "rodata", "data", "relocations")  # payload order, fixed
UNWIND_SECTION = "unwind"  # format 1.1: follows the relocation table in the payload
_EMPTY_SHA256 = hashlib.sha256(b"").digest()
T = TypeVar("T")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


@dataclass(frozen=True)
class SectionEntry:
    """A payload section's size and the SHA-256 of its bytes after decompression."""

    size: int
    sha256: bytes


@dataclass(frozen=True)
class Manifest:
    """A decoded manifest: the package without its section bytes, plus what the payload must match."""

    package: Package  # code, rodata, data and relocations are empty here; the payload fills them
    sections: dict[str, SectionEntry]
    payload_sha256: bytes  # of the compressed payload, so tampering is caught before decompression
    ignored_fields: tuple[str, ...]


def canonical_json(document: Any) -> bytes:
    """The one canonical encoding of a JSON-able document."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def package_document(pkg: Package) -> dict[str, Any]:
    """The package's records as JSON values (bytes as lowercase hex); also what `inspect --json` shows."""
    t, i = pkg.target, pkg.identity
    return {
        "target": {
            "file_format": t.file_format,
            "machine": t.machine,
            "build_id": t.build_id.hex(),
            "image_size": t.image_size,
            "file_sha256": None if t.file_sha256 is None else t.file_sha256.hex(),
            "soname_hint": t.soname_hint,
            # Only a PE32+ target has the key (format 1.4): an ELF package's manifest stays byte for byte.
            **({} if t.image_base is None else {"image_base": t.image_base}),
        },
        "identity": {
            "package_id": i.package_id,
            "patch_level": i.patch_level,
            "supersedes": i.supersedes,
            "builder_version": i.builder_version,
        },
        "functions": [
            {
                "name": f.name,
                "baseline_address": f.baseline_address,
                "baseline_size": f.baseline_size,
                "baseline_sha256": f.baseline_sha256.hex(),
                "pre_image": f.pre_image.hex(),
                "code_offset": f.code_offset,
                "code_size": f.code_size,
            }
            for f in pkg.functions
        ],
        "added_functions": [
            {"name": f.name, "code_offset": f.code_offset, "code_size": f.code_size}
            for f in pkg.added_functions
        ],
        "data_objects": [
            {"name": d.name, "section": d.section.value, "offset": d.offset, "size": d.size}
            for d in pkg.data_objects
        ],
        "imports": [{"name": m.name, "version": m.version} for m in pkg.imports],
        "allowed_overrides": list(pkg.allowed_overrides),
        "bss_size": pkg.bss_size,
    }


def encode_manifest(pkg: Package, sections: dict[str, SectionEntry], payload_sha256: bytes) -> bytes:
    """Canonical manifest bytes for a validated package and the digests of its encoded sections."""
    document = package_document(pkg)
    document["sections"] = {name: {"size": s.size, "sha256": s.sha256.hex()} for name, s in sections.items()}
    document["payload_sha256"] = payload_sha256.hex()
    return canonical_json(document)


class _Reader:
    """Reads one JSON object strictly: named fields, exact key set, types and ranges checked."""

    def __init__(self, value: Any, where: str, lenient: bool, ignored: list[str]) -> None:
        if not isinstance(value, dict):
            raise PackageError(f"manifest {where or 'top level'}: expected an object")
        self.value, self.where, self.lenient, self.ignored = value, where, lenient, ignored
        self.seen: set[str] = set()

    def _get(self, key: str) -> Any:
        if key not in self.value:
            raise PackageError(f"manifest {self.where or 'top level'}: missing field {key!r}")
        self.seen.add(key)
        return self.value[key]

    def _path(self, key: str) -> str:
        return f"manifest {self._join(key)}"

    def _join(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def integer(self, key: str, low: int = 0, high: int = U64_MAX) -> int:
        return check_int(self._get(key), low, high, self._path(key))

    def text(self, key: str, *, allow_empty: bool = False) -> str:
        return check_text(self._get(key), self._path(key), allow_empty=allow_empty)

    def optional_text(self, key: str) -> str | None:
        value = self._get(key)
        return None if value is None else check_text(value, self._path(key))

    def hex_bytes(self, key: str, low: int, high: int) -> bytes:
        value = self._get(key)
        return _hex(value, low, high, self._path(key))

    def optional_hex(self, key: str, size: int) -> bytes | None:
        value = self._get(key)
        return None if value is None else _hex(value, size, size, self._path(key))

    def items(self, key: str) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list):
            raise PackageError(f"{self._path(key)}: expected a list")
        if len(value) > limits.MAX_RECORDS:
            raise PackageError(f"{self._path(key)}: {len(value)} records, over {limits.MAX_RECORDS}")
        return value

    def child(self, key: str) -> _Reader:
        return _Reader(self._get(key), self._join(key), self.lenient, self.ignored)

    def done(self) -> None:
        """Refuse keys this reader does not know, unless the package is from a newer minor version."""
        extra = sorted(set(self.value) - self.seen)
        if extra and not self.lenient:
            raise PackageError(f"manifest {self.where or 'top level'}: unknown field {extra[0]!r}")
        self.ignored.extend(self._join(key) for key in extra)


def _hex(value: Any, low: int, high: int, where: str) -> bytes:
    if not isinstance(value, str):
        raise PackageError(f"{where}: expected a lowercase hex string")
    if len(value) > 2 * high or len(value) < 2 * low:
        raise PackageError(f"{where}: {len(value) // 2} bytes, expected {low}..{high}")
    if not _HEX.fullmatch(value):
        raise PackageError(f"{where}: not a lowercase hex string of whole bytes")
    return bytes.fromhex(value)


def _reject_constant(name: str) -> None:
    raise PackageError(f"manifest holds the non-JSON number {name}")


def _reject_float(text: str) -> None:
    raise PackageError(f"manifest holds the non-integer number {text[:40]}")


def _parse(manifest: bytes) -> Any:
    """Parse canonical JSON, refusing anything the writer could not have produced."""
    try:
        text = manifest.decode("ascii")
        document = json.loads(text, parse_constant=_reject_constant, parse_float=_reject_float)
    except UnicodeDecodeError:
        raise PackageError("manifest is not ASCII: the package is corrupt") from None
    except RecursionError:
        raise PackageError("manifest nests too deeply: the package is corrupt") from None
    except ValueError as exc:  # JSONDecodeError, and ints beyond Python's digit limit
        raise PackageError(f"manifest is not valid JSON ({str(exc)[:80]}): the package is corrupt") from None
    try:
        canonical = canonical_json(document)
    except (ValueError, RecursionError):
        raise PackageError("manifest is not in canonical form: the package is corrupt") from None
    if canonical != manifest:
        raise PackageError("manifest is not in canonical form (key order, spacing or escapes differ)")
    return document


def _decode_target(r: _Reader, minor: int) -> TargetRecord:
    # target.image_base exists from 1.4 on (a PE32+ baseline); in an older minor it is an unknown key.
    image_base = r.integer("image_base") if minor >= PE_MINOR and "image_base" in r.value else None
    target = TargetRecord(
        file_format=r.text("file_format"),
        machine=r.text("machine"),
        build_id=r.hex_bytes("build_id", 1, limits.MAX_BUILD_ID),
        image_size=r.integer("image_size", 1),
        file_sha256=r.optional_hex("file_sha256", 32),
        soname_hint=r.text("soname_hint", allow_empty=True),
        image_base=image_base,
    )
    r.done()
    return target


def _decode_identity(r: _Reader) -> PatchIdentity:
    identity = PatchIdentity(
        package_id=r.text("package_id"),
        patch_level=r.integer("patch_level", 1, U32_MAX),
        supersedes=r.optional_text("supersedes"),
        builder_version=r.text("builder_version", allow_empty=True),
    )
    r.done()
    return identity


def _decode_function(r: _Reader) -> ReplacedFunction:
    function = ReplacedFunction(
        name=r.text("name"),
        baseline_address=r.integer("baseline_address"),
        baseline_size=r.integer("baseline_size", 1),
        baseline_sha256=r.hex_bytes("baseline_sha256", 32, 32),
        pre_image=r.hex_bytes("pre_image", 1, limits.MAX_PRE_IMAGE),
        code_offset=r.integer("code_offset", 0, U32_MAX),
        code_size=r.integer("code_size", 1, U32_MAX),
    )
    r.done()
    return function


def _decode_added(r: _Reader) -> AddedFunction:
    added = AddedFunction(
        name=r.text("name"),
        code_offset=r.integer("code_offset", 0, U32_MAX),
        code_size=r.integer("code_size", 1, U32_MAX),
    )
    r.done()
    return added


def _decode_data_object(r: _Reader) -> DataObject:
    section = r.text("section")
    if section not in {s.value for s in DataSection}:
        raise PackageError(f"manifest {r.where}.section: {section!r} is not rodata, data or bss")
    data_object = DataObject(
        name=r.text("name"),
        section=DataSection(section),
        offset=r.integer("offset", 0, U32_MAX),
        size=r.integer("size", 0, U32_MAX),
    )
    r.done()
    return data_object


def _decode_import(r: _Reader) -> ImportRecord:
    record = ImportRecord(name=r.text("name"), version=r.optional_text("version"))
    r.done()
    return record


def section_names(minor: int) -> tuple[str, ...]:
    """The payload sections, in order, of a package of format minor version `minor`."""
    return SECTION_NAMES + (UNWIND_SECTION,) if minor >= 1 else SECTION_NAMES


def _decode_sections(r: _Reader, minor: int) -> dict[str, SectionEntry]:
    sections = {}
    for name in section_names(minor):
        if name == UNWIND_SECTION and name not in r.value:
            sections[name] = SectionEntry(0, _EMPTY_SHA256)  # optional: absent means no unwind rules
            continue
        s = r.child(name)
        # The relocation table is bounded by its record count, before anything is decompressed.
        high = RECORD_SIZE * limits.MAX_RELOCATIONS if name == "relocations" else limits.MAX_PAYLOAD_SIZE
        size = s.integer("size", 0, high)
        sections[name] = SectionEntry(size, s.hex_bytes("sha256", 32, 32))
        s.done()
    r.done()
    return sections


def _records(root: _Reader, key: str, decode: Callable[[_Reader], T]) -> tuple[T, ...]:
    """Decode the list `key` of `root`, one strict reader per record."""
    return tuple(
        decode(_Reader(value, f"{key}[{n}]", root.lenient, root.ignored))
        for n, value in enumerate(root.items(key))
    )


def decode_manifest(manifest: bytes, lenient: bool = False, minor: int = 0) -> Manifest:
    """Decode canonical manifest bytes; `lenient` ignores unknown keys (a newer minor version wrote them).

    `minor` is the header's minor version: 1.1 and later list the unwind section too.
    """
    ignored: list[str] = []
    root = _Reader(_parse(manifest), "", lenient, ignored)
    target = _decode_target(root.child("target"), minor)
    identity = _decode_identity(root.child("identity"))
    functions = _records(root, "functions", _decode_function)
    added = _records(root, "added_functions", _decode_added)
    data_objects = _records(root, "data_objects", _decode_data_object)
    imports = _records(root, "imports", _decode_import)
    overrides = tuple(
        check_text(v, f"manifest allowed_overrides[{n}]")
        for n, v in enumerate(root.items("allowed_overrides"))
    )
    bss_size = root.integer("bss_size", 0, limits.MAX_BSS_SIZE)
    sections = _decode_sections(root.child("sections"), minor)
    payload_sha256 = root.hex_bytes("payload_sha256", 32, 32)
    root.done()
    package = Package(
        target=target,
        identity=identity,
        functions=functions,
        added_functions=added,
        data_objects=data_objects,
        imports=imports,
        allowed_overrides=overrides,
        bss_size=bss_size,
    )
    return Manifest(package, sections, payload_sha256, tuple(ignored))
