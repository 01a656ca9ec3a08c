"""Package mutants that pass the signature: unpack, change, repack, re-sign with the test key.

A mutant is a recipe: a list of edits (JSON-able dicts) applied to a real package built from a sample.
Edits change the manifest JSON (any value, a deleted or unknown key, a type swap), payload section
bytes or sizes, a relocation record's field, or a header field; then the section digests and sizes
and the payload digest are recomputed (unless an edit says not to), the manifest is re-encoded
canonically, and the whole is signed again, so the mutant reaches everything behind the signature
check. `raw` edits damage the finished file (after signing), as a bad disk would.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import random
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpkg.formats.compression import (
    compress_manifest,
    compress_payload,
    decompress_manifest,
    decompress_payload,
)
from hpkg.formats.header import FLAG_SIGNED, HEADER_SIZE, decode_header, encode_header
from hpkg.formats.manifest import canonical_json, section_names
from hpkg.formats.signing import key_id, sign, signed_message

Edit = dict[str, Any]
# A relocation record (formats/SPEC.md, "Relocation table"): section, kind, space, reserved, offset,
# target, addend.
RELOCATION = struct.Struct("<BBBBIQq")
RELOCATION_FIELDS = ("section", "kind", "space", "reserved", "offset", "target", "addend")
# The header after the magic: major, minor, flags, key_id, manifest_size, manifest_json_size,
# compressed_size, payload_size (formats/header.py), as (offset, struct format).
HEADER_FIELDS = {
    "major": (8, "<H"), "minor": (10, "<H"), "flags": (12, "<I"), "manifest_size": (24, "<I"),
    "manifest_json_size": (28, "<I"), "compressed_size": (32, "<Q"), "payload_size": (40, "<Q"),
}  # fmt: skip


@dataclass(frozen=True)
class Unpacked:
    """A real package taken apart: its header fields, manifest document and payload sections."""

    minor: int
    document: dict[str, Any]
    sections: dict[str, bytes]

    @staticmethod
    def of(blob: bytes) -> Unpacked:
        header = decode_header(blob)
        manifest_end = HEADER_SIZE + header.manifest_size
        manifest = decompress_manifest(blob[HEADER_SIZE:manifest_end], header.manifest_json_size)
        document = json.loads(manifest)
        payload = decompress_payload(blob[manifest_end : manifest_end + header.compressed_size],
                                     header.payload_size)  # fmt: skip
        sections, start = {}, 0
        for name in section_names(header.minor):
            size = document["sections"][name]["size"]
            sections[name] = payload[start : start + size]
            start += size
        return Unpacked(header.minor, document, sections)


def _set_path(document: Any, path: list[Any], value: Any, delete: bool) -> None:
    node = document
    for step in path[:-1]:
        node = node[step]
    if delete:
        del node[path[-1]]
    elif isinstance(node, list) and path[-1] == len(node):
        node.append(value)
    else:
        node[path[-1]] = value


def repack(base: Unpacked, edits: list[Edit], key: Ed25519PrivateKey | None) -> bytes:
    """The package `base` with `edits` applied, digests fixed and signed by `key` (unless told not to)."""
    document = copy.deepcopy(base.document)
    sections = {name: bytearray(data) for name, data in base.sections.items()}
    skip = {e["what"] for e in edits if e["op"] == "nofix"}
    for edit in edits:
        if edit["op"] == "section" and edit["name"] in sections:
            data = sections[edit["name"]]
            if data:
                data[edit["at"] % len(data)] = edit["byte"]
        elif edit["op"] == "resize" and edit["name"] in sections:
            data = sections[edit["name"]]
            sections[edit["name"]] = (data + bytes(max(0, edit["size"] - len(data))))[: edit["size"]]
        elif edit["op"] == "reloc":
            table = sections["relocations"]
            count = len(table) // RELOCATION.size
            if count:
                at = (edit["index"] % count) * RELOCATION.size
                fields = list(RELOCATION.unpack_from(table, at))
                index = RELOCATION_FIELDS.index(edit["field"])
                width = RELOCATION.format.lstrip("<")[index]
                bits = {"B": 8, "I": 32, "Q": 64, "q": 64}[width]
                value = edit["value"] & ((1 << bits) - 1)
                fields[index] = value - (1 << bits) if width == "q" and value >= 1 << 63 else value
                RELOCATION.pack_into(table, at, *fields)
    payload = b"".join(sections.values())
    frame = compress_payload(payload)
    if "digests" not in skip:
        for name, data in sections.items():
            document["sections"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        document["payload_sha256"] = hashlib.sha256(frame).hexdigest()
    for edit in edits:
        if edit["op"] == "json":
            # A path an earlier edit removed makes the edit do nothing.
            with contextlib.suppress(KeyError, IndexError, TypeError):
                _set_path(document, edit["path"], edit.get("value"), edit.get("delete", False))
    manifest_json = canonical_json(document)
    manifest = compress_manifest(manifest_json)
    header = bytearray(encode_header_for(base.minor, key, manifest, manifest_json, frame, payload))
    for edit in edits:
        if edit["op"] == "header":
            offset, layout = HEADER_FIELDS[edit["field"]]
            width = struct.calcsize(layout) * 8
            struct.pack_into(layout, header, offset, edit["value"] & ((1 << width) - 1))
    signed = bool(struct.unpack_from("<I", header, 12)[0] & FLAG_SIGNED)
    signature = b""
    if key is not None and signed:
        signature = bytes(64) if "signature" in skip else sign(key, signed_message(bytes(header), manifest))
    blob = bytearray(bytes(header) + manifest + frame + signature)
    for edit in edits:
        if edit["op"] == "raw" and blob:
            blob[edit["at"] % len(blob)] = edit["byte"]
        elif edit["op"] == "cut":
            del blob[edit["at"] :]
    return bytes(blob)


def encode_header_for(minor: int, key: Ed25519PrivateKey | None, manifest: bytes, manifest_json: bytes,
                      frame: bytes, payload: bytes) -> bytes:  # fmt: skip
    """The header a writer would put before these parts."""
    from hpkg.formats.header import FORMAT_MAJOR, KEY_ID_SIZE, Header

    return encode_header(
        Header(
            major=FORMAT_MAJOR,
            minor=minor,
            flags=FLAG_SIGNED if key is not None else 0,
            key_id=key_id(key.public_key()) if key is not None else bytes(KEY_ID_SIZE),
            manifest_size=len(manifest),
            manifest_json_size=len(manifest_json),
            compressed_size=len(frame),
            payload_size=len(payload),
        )
    )


# -- generating edits ------------------------------------------------------------------------------------


def _paths(node: Any, prefix: list[Any]) -> list[list[Any]]:
    """Every path into the manifest document (containers and leaves)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key in node:
            found += _paths(node[key], [*prefix, key])
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += _paths(item, [*prefix, index])
    return found


def _get(document: Any, path: list[Any]) -> Any:
    for step in path:
        document = document[step]
    return document


def _hostile_value(rng: random.Random, old: Any) -> Any:
    """A value of another type, or of the same type at a boundary, to put where `old` was."""
    if isinstance(old, bool) or old is None:
        pass
    elif isinstance(old, int):
        return rng.choice((0, 1, -1, old + 1, old - 1, old * 2, 2**31, 2**32, 2**63, 2**64, 10**30, -(2**63)))
    elif isinstance(old, str):
        hexish = all(c in "0123456789abcdef" for c in old) and len(old) % 2 == 0 and old
        choices = ["", "x" * 5000, "\x1b[31mred", "caf\u00e9", "a\nb", old + "0", old.upper(), old[:-2]]
        if hexish:
            choices += ["0" * len(old), old[:-1], "zz" + old[2:], old + "00"]
        return rng.choice(choices)
    elif isinstance(old, list):
        return rng.choice(([], old + old[:1], old[1:], [old], list(reversed(old)), [[[[[]]]]] * 3))
    elif isinstance(old, dict):
        return rng.choice(({}, {**old, "unknown": 1}, [old]))
    return rng.choice((None, True, 0, "", [], {}, -1, "0" * 64))


def random_edits(base: Unpacked, rng: random.Random) -> list[Edit]:
    """One to four edits of `base`, mostly behind the signature (re-signed), some that damage it."""
    edits: list[Edit] = []
    paths = _paths(base.document, [])
    relocations = len(base.sections.get("relocations", b"")) // RELOCATION.size
    for _ in range(rng.choice((1, 1, 2, 3, 4))):
        kind = rng.choices(
            ("json", "delete", "section", "resize", "reloc", "header", "nofix", "raw", "cut"),
            weights=(10, 2, 3, 2, 5 if relocations else 0, 2, 1, 1, 1),
        )[0]
        if kind in ("json", "delete"):
            path = rng.choice(paths)
            if kind == "delete":
                edits.append({"op": "json", "path": path, "delete": True})
            else:
                value = _hostile_value(rng, _get(base.document, path))
                edits.append({"op": "json", "path": path, "value": value})
        elif kind == "section":
            name = rng.choice(list(base.sections))
            at, byte = rng.randrange(1 << 16), rng.randrange(256)
            edits.append({"op": "section", "name": name, "at": at, "byte": byte})
        elif kind == "resize":
            name = rng.choice(list(base.sections))
            size = len(base.sections[name])
            size = rng.choice((0, size // 2, size + 1, size + 24))
            edits.append({"op": "resize", "name": name, "size": size})
        elif kind == "reloc":
            field = rng.choice(RELOCATION_FIELDS)
            value = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 0xFF, 2**31, 2**32 - 1, 2**63, 2**64 - 1,
                                rng.randrange(4096)))  # fmt: skip
            edits.append({"op": "reloc", "index": rng.randrange(relocations), "field": field, "value": value})
        elif kind == "header":
            field = rng.choice(list(HEADER_FIELDS))
            value = rng.choice((0, 1, 2, 0xFFFF, 2**32 - 1, 2**63))
            edits.append({"op": "header", "field": field, "value": value})
        elif kind == "nofix":
            edits.append({"op": "nofix", "what": rng.choice(("digests", "signature"))})
        elif kind == "raw":
            edits.append({"op": "raw", "at": rng.randrange(1 << 12), "byte": rng.randrange(256)})
        else:
            edits.append({"op": "cut", "at": rng.randrange(1 << 10)})
    return edits
