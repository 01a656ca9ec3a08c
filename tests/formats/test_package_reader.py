"""The strict reader: each kind of malformed, hostile or tampered file ends in PackageError or VerifyError."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from package_crafting import assemble, flip, manifest_json, split, with_sections

from hpkg.errors import PackageError, VerifyError
from hpkg.formats import Package, limits, read_package, read_package_file, verify_signature, write_package
from hpkg.formats.dictionary import MANIFEST_DICTIONARY, manifest_dictionary
from hpkg.formats.header import DIGEST_MINOR, FORMAT_MINOR, HEADER_SIZE
from hpkg.formats.manifest import SECTION_NAMES
from hpkg.formats.package import MAX_FILE_SIZE

BOMB_SIZE = 512 * 1024 * 1024  # eight times the hard bound on a payload


@pytest.fixture(scope="module")
def unsigned(real_package: Package) -> bytes:
    return write_package(real_package)


@pytest.fixture(scope="module")
def signed(real_package: Package, signing_key) -> bytes:
    return write_package(real_package, signing_key)


# --- header ---------------------------------------------------------------------------------


@pytest.mark.parametrize("major", [0, 2, 65535])
def test_unknown_major_version_is_refused_clearly(unsigned: bytes, major: int) -> None:
    fields, document, frame, _ = split(unsigned)
    fields[1] = major
    blob = assemble(fields, document, frame)
    expected = rf"unsupported \.hpkg format version {major}\.{fields[2]}.*reads version 1\.x"
    with pytest.raises(PackageError, match=expected):
        read_package(blob)
    # A future major may change everything after the version: even its first 12 bytes get the message.
    with pytest.raises(PackageError, match="unsupported .hpkg format version"):
        read_package(blob[:12])


def test_bad_magic_says_it_is_not_a_package(unsigned: bytes) -> None:
    with pytest.raises(PackageError, match="not an .hpkg package"):
        read_package(b"\x7fELF" + unsigned[4:])
    with pytest.raises(PackageError, match="not an .hpkg package"):
        read_package(b"")


def test_truncation_anywhere_is_refused(unsigned: bytes, signed: bytes) -> None:
    for blob in (unsigned, signed):
        for size in sorted({0, 5, 11, 12, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 10, len(blob) // 2,
                            len(blob) - 64, len(blob) - 1}):
            with pytest.raises(PackageError, match="truncated|bad magic"):
                read_package(blob[:size])


def test_trailing_garbage_is_refused(unsigned: bytes, signed: bytes) -> None:
    for blob in (unsigned, signed):
        with pytest.raises(PackageError, match="1 bytes of trailing garbage"):
            read_package(blob + b"\0")


@pytest.mark.parametrize(
    "index, value, message",
    [(3, 0x2, "unknown flag bits"), (4, 1, "unsigned package carries a key id")],
    ids=["flags", "key-id-without-signature"],
)
def test_header_fields_are_checked(unsigned: bytes, index: int, value: int, message: str) -> None:
    fields, document, frame, _ = split(unsigned)
    fields[index] = value if index != 4 else b"\1" * 8
    if index == 4:
        fields[2] = DIGEST_MINOR - 1  # before 1.3 an unsigned package's key id is all zero
    with pytest.raises(PackageError, match=message):
        read_package(assemble(fields, document, frame))


def test_oversized_manifest_is_refused_from_the_header(unsigned: bytes) -> None:
    fields, document, frame, _ = split(unsigned)
    fields[5] = limits.MAX_MANIFEST_FRAME_SIZE + 1
    blob = assemble(fields, document, frame, fix_sizes=False)
    with pytest.raises(PackageError, match="manifest size .* outside"):
        read_package(blob)


@pytest.mark.parametrize(
    "declared, message",
    [
        (0, "manifest of 0 bytes, outside 1"),
        (limits.MAX_MANIFEST_SIZE + 1, "refusing it before decompression"),
        (1 << 31, "refusing it before decompression"),
    ],
    ids=["zero", "over-the-limit", "huge"],
)
def test_declared_manifest_size_is_bounded_in_the_header(unsigned: bytes, declared: int, message: str):
    fields, _, frame, _ = split(unsigned)
    stored = unsigned[HEADER_SIZE : HEADER_SIZE + fields[5]]
    fields[6] = declared
    with pytest.raises(PackageError, match=message):
        read_package(assemble(fields, b"", frame, fix_sizes=False, stored_manifest=stored))


def test_declared_manifest_size_must_match_the_frame(unsigned: bytes) -> None:
    fields, _, frame, _ = split(unsigned)
    stored = unsigned[HEADER_SIZE : HEADER_SIZE + fields[5]]
    size = fields[6]
    for declared in (size - 1, size + 1):
        fields[6] = declared
        blob = assemble(fields, b"", frame, fix_sizes=False, stored_manifest=stored)
        with pytest.raises(PackageError, match=f"manifest: the zstd frame declares {size} bytes, the package"
                                               f" header {declared}; refusing to decompress"):
            read_package(blob)


# --- manifest -------------------------------------------------------------------------------


def _with_manifest_bytes(blob: bytes, manifest: bytes) -> bytes:
    fields, _, frame, _ = split(blob)
    return assemble(fields, manifest, frame)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda text: text.replace(b'":', b'": ', 1), "canonical"),
        (lambda text: b'{"bss_size":0,' + text[1:], "canonical"),  # a duplicate key
        (lambda text: text.replace(b'"bss_size":0', b'"bss_size":0.0'), "non-integer"),
        (lambda text: text.replace(b'"bss_size":0', b'"bss_size":NaN'), "non-JSON number"),
        (lambda text: text.replace(b'"bss_size":0', b'"bss_size":' + b"9" * 5000), "not valid JSON"),
        (lambda text: text.replace(b'"bss_size":0', b'"bss_size":' + b"[" * 100000 + b"]" * 100000), "nests"),
        (lambda text: text[:-1], "not valid JSON"),
        (lambda text: text.replace(b'"machine":"x86_64"', b'"machine":"x86_\xff4"'), "not ASCII"),
        (lambda text: b"[]", "expected an object"),
    ],
    ids=["whitespace", "duplicate-key", "float", "nan", "huge-int", "deep-nesting", "cut-json", "non-ascii",
         "not-an-object"],
)
def test_malformed_manifest_bytes_are_refused(unsigned: bytes, edit, message: str) -> None:
    manifest = manifest_json(unsigned)
    with pytest.raises(PackageError, match=message):
        read_package(_with_manifest_bytes(unsigned, edit(manifest)))


def _edit_document(blob: bytes, edit) -> bytes:
    fields, document, frame, _ = split(blob)
    edit(document)
    return assemble(fields, document, frame)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["target"].pop("build_id"), "missing field 'build_id'"),
        (lambda d: d["target"].update(build_id="ABCD"), "lowercase hex"),
        (lambda d: d["target"].update(build_id="ab cd"), "lowercase hex"),
        (lambda d: d["functions"][0].update(code_offset=-1), "outside 0"),
        (lambda d: d["functions"][0].update(code_offset=True), "expected an integer"),
        (lambda d: d["functions"][0].update(code_offset=1 << 40), "outside 0"),
        (lambda d: d["functions"][0].update(code_size=10**6), "outside a section"),
        (lambda d: d["functions"][0].update(name=""), "must not be empty"),
        (lambda d: d["functions"][0].update(name="a\nb"), "control"),
        (lambda d: d["functions"][0].update(pre_image=""), "pre_image"),
        (lambda d: d["functions"].append(d["functions"][0]), "overlap"),
        (lambda d: d.update(functions=[{}] * (limits.MAX_RECORDS + 1)), "over 16384"),
        (lambda d: d["data_objects"][0].update(section="stack"), "not rodata, data or bss"),
        (lambda d: d["identity"].update(extra=1), "unknown field 'extra'"),
        (lambda d: d.update(future=1), "unknown field 'future'"),
        (lambda d: d["imports"].clear(), "import index"),
        (lambda d: d["sections"]["code"].update(size=d["sections"]["code"]["size"] + 1), "add up to"),
        (lambda d: d["identity"].update(supersedes=d["identity"]["package_id"]), "supersede itself"),
    ],
    ids=[
        "missing-field", "uppercase-hex", "hex-with-space", "negative", "bool-as-int", "offset-too-large",
        "code-range", "empty-name", "newline-in-name", "empty-pre-image", "duplicate-patch-site", "too-many",
        "data-section", "unknown-nested-field", "unknown-top-field", "dangling-import", "size-sum",
        "supersedes-itself",
    ],
)
def test_inconsistent_manifest_is_refused(unsigned: bytes, edit, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        read_package(_edit_document(unsigned, edit))


def test_newer_minor_version_with_unknown_fields_is_read_and_reports_them(unsigned: bytes) -> None:
    fields, document, frame, _ = split(unsigned)
    fields[2] = FORMAT_MINOR + 1
    document["future"] = {"hint": 1}
    document["target"]["loader_hint"] = "x"
    loaded = read_package(assemble(fields, document, frame))
    assert loaded.format_version == (1, FORMAT_MINOR + 1)
    assert loaded.ignored_fields == ("target.loader_hint", "future")
    # A newer minor must still carry every field this reader needs.
    del document["target"]["build_id"]
    with pytest.raises(PackageError, match="missing field 'build_id'"):
        read_package(assemble(fields, document, frame))


# --- payload --------------------------------------------------------------------------------


def test_altered_payload_fails_its_digest_before_decompression(unsigned: bytes) -> None:
    fields, document, frame, _ = split(unsigned)
    with pytest.raises(VerifyError, match="compressed payload does not match its digest"):
        read_package(assemble(fields, document, flip(frame, len(frame) // 2), fix_payload_digest=False))


def test_altered_section_fails_its_digest(unsigned: bytes) -> None:
    for name in SECTION_NAMES:
        def edit(d, name=name):
            d["sections"][name]["sha256"] = hashlib.sha256(b"other").hexdigest()
        with pytest.raises(VerifyError, match=f"section {name} does not match its digest"):
            read_package(_edit_document(unsigned, edit))


def test_relocation_table_is_checked_record_by_record(unsigned: bytes, real_package: Package) -> None:
    table = with_sections(unsigned)  # consistent re-pack of the same content reads back equal
    assert read_package(table).package == real_package
    record = struct.pack("<BBBBIQq", 1, 2, 0, 0, 0, 0x1000, -4)
    assert read_package(with_sections(unsigned, relocations=record)).package.relocations[0].target == 0x1000
    cases = {
        record[:-1]: "whole number",
        struct.pack("<BBBBIQq", 1, 99, 0, 0, 0, 0, 0): "type 99, which this hpkg does not support",
        struct.pack("<BBBBIQq", 9, 2, 0, 0, 0, 0, 0): "unknown section number 9",
        struct.pack("<BBBBIQq", 1, 2, 9, 0, 0, 0, 0): "unknown target space 9",
        struct.pack("<BBBBIQq", 1, 2, 0, 7, 0, 0, 0): "reserved byte",
        struct.pack("<BBBBIQq", 1, 2, 1, 0, 0, 1 << 20, 0): "offset in code",
        struct.pack("<BBBBIQq", 2, 1, 0, 0, 1 << 30, 0, 0): "outside a section",
    }
    for table_bytes, message in cases.items():
        with pytest.raises(PackageError, match=message):
            read_package(with_sections(unsigned, relocations=table_bytes))


def _bomb_frame(size: int, *, content_size: bool) -> bytes:
    """A zstd frame of `size` zero bytes, built in 1 MiB steps so the test itself stays small."""
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    with cctx.stream_writer(out, size=size if content_size else -1, closefd=False) as writer:
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            writer.write(chunk)
    return out.getvalue()


def _set_frame_content_size(frame: bytes, value: int) -> bytes:
    """Rewrite the Frame_Content_Size field of a zstd frame header (RFC 8878 §3.1.1.1)."""
    descriptor = frame[4]
    single_segment = (descriptor >> 5) & 1
    dict_id_bytes = (0, 1, 2, 4)[descriptor & 3]
    field_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    assert field_bytes == 4
    start = 5 + (0 if single_segment else 1) + dict_id_bytes
    return frame[:start] + struct.pack("<I", value) + frame[start + 4 :]


def _package_around(blob: bytes, frame: bytes, declared: int) -> bytes:
    """`blob` with its payload replaced by `frame`, header and manifest declaring `declared` bytes."""
    fields, document, _, _ = split(blob)
    fields[8] = declared
    document["sections"] = {name: {"size": 0, "sha256": "00" * 32} for name in SECTION_NAMES}
    document["sections"]["code"]["size"] = declared
    return assemble(fields, document, frame)


@pytest.fixture(scope="module")
def bomb_frames() -> dict[str, bytes]:
    sized = _bomb_frame(BOMB_SIZE, content_size=True)
    return {
        "sized": sized,
        "unsized": _bomb_frame(BOMB_SIZE, content_size=False),
        "lying": _set_frame_content_size(sized, 1000),
    }


def test_declared_size_beyond_the_hard_bound_is_refused_before_decompression(unsigned: bytes) -> None:
    fields, document, frame, _ = split(unsigned)
    fields[8] = limits.MAX_PAYLOAD_SIZE + 1
    with pytest.raises(PackageError, match="refusing it before decompression"):
        read_package(assemble(fields, document, frame))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("sized", "the zstd frame declares 536870912 bytes, the package header 1000"),
        ("unsized", "the zstd frame does not declare its size"),
        ("lying", "zstd could not decompress it"),
    ],
)
def test_small_declared_size_over_a_bomb_is_refused(unsigned: bytes, bomb_frames, kind: str, message: str):
    with pytest.raises(PackageError, match=message):
        read_package(_package_around(unsigned, bomb_frames[kind], 1000))


def test_frame_needing_a_large_window_is_refused(unsigned: bytes) -> None:
    size = 16 << 20
    params = zstandard.ZstdCompressionParameters(window_log=27, compression_level=1)
    frame = zstandard.ZstdCompressor(compression_params=params).compress(b"\x90" * size)
    with pytest.raises(PackageError, match="window"):
        read_package(_package_around(unsigned, frame, size))


def test_bomb_reading_uses_bounded_memory(unsigned: bytes, bomb_frames, tmp_path: Path) -> None:
    # Peak RSS of a fresh process is a fact we can check without timing anything.
    (tmp_path / "lying.hpkg").write_bytes(_package_around(unsigned, bomb_frames["lying"], 1000))
    (tmp_path / "sized.hpkg").write_bytes(_package_around(unsigned, bomb_frames["sized"], 64 << 20))
    script = (
        "import resource, sys\n"
        "from hpkg.errors import PackageError\n"
        "from hpkg.formats import read_package, read_package_file\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        read_package(read_package_file(path))\n"
        "    except PackageError as exc:\n"
        "        print(exc, file=sys.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    files = [str(tmp_path / "lying.hpkg"), str(tmp_path / "sized.hpkg")]
    run = subprocess.run([sys.executable, "-c", script, *files], capture_output=True, text=True, check=True)
    grown_kib = int(run.stdout.strip())
    assert grown_kib < 32 * 1024, f"reading two bombs grew the process by {grown_kib} KiB"
    assert run.stderr.count("\n") == 2


# --- signatures -----------------------------------------------------------------------------


def test_signature_is_checked_before_the_manifest_is_parsed(signed: bytes, signing_key) -> None:
    fields, _, frame, signature = split(signed)
    garbage = assemble(fields, b"{not json", frame, signature)
    with pytest.raises(VerifyError, match="signature does not match"):
        read_package(garbage, signing_key.public_key())
    with pytest.raises(PackageError, match="not valid JSON"):
        read_package(garbage)
    # Before it is decompressed, too: a manifest that is no zstd frame at all gets the signature error.
    not_zstd = assemble(fields, b"{}", frame, signature, stored_manifest=b"{not zstd}")
    with pytest.raises(VerifyError, match="signature does not match"):
        read_package(not_zstd, signing_key.public_key())
    with pytest.raises(PackageError, match="corrupt manifest: not a zstd frame"):
        read_package(not_zstd)


def test_wrong_key_and_missing_signature_are_verify_errors(signed: bytes, unsigned: bytes, signing_key,
                                                           other_key) -> None:
    with pytest.raises(VerifyError, match="signed by key .* not by the given key"):
        read_package(signed, other_key.public_key())
    with pytest.raises(VerifyError, match="not signed"):
        read_package(unsigned, signing_key.public_key())
    with pytest.raises(VerifyError, match="not signed"):
        verify_signature(read_package(unsigned), signing_key.public_key())
    verify_signature(read_package(signed), signing_key.public_key())


def test_manifest_edit_under_a_signature_fails_verification(signed: bytes, signing_key) -> None:
    fields, document, frame, signature = split(signed)
    document["identity"]["patch_level"] += 1
    edited = assemble(fields, document, frame, signature)
    loaded = read_package(edited)  # structurally fine ...
    with pytest.raises(VerifyError, match="signature does not match"):
        verify_signature(loaded, signing_key.public_key())  # ... but not what was signed


def test_public_key_material_is_checked(signed: bytes, tmp_path: Path) -> None:
    (tmp_path / "junk.pub").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(VerifyError, match="not a PEM Ed25519 public key"):
        verify_signature(read_package(signed), tmp_path / "junk.pub")
    with pytest.raises(VerifyError, match="cannot read public key"):
        verify_signature(read_package(signed), tmp_path / "missing.pub")


# --- files ----------------------------------------------------------------------------------


def test_file_larger_than_any_package_is_refused_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "huge.hpkg"
    with open(huge, "wb") as f:
        f.truncate(4 * MAX_FILE_SIZE)  # sparse: costs no disk
    with pytest.raises(PackageError, match="larger than any valid package"):
        read_package_file(huge)
    with pytest.raises(PackageError, match="cannot read package"):
        read_package_file(tmp_path / "absent.hpkg")
    with pytest.raises(PackageError, match="cannot read package"):
        read_package_file(tmp_path)


def test_manifest_is_sorted_json_compressed_with_the_format_dictionary(unsigned: bytes) -> None:
    fields, document, _, _ = split(unsigned)
    stored = unsigned[HEADER_SIZE : HEADER_SIZE + fields[5]]
    plain = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert fields[6] == len(plain) and len(stored) < len(plain) // 2
    assert stored[:4] == b"\x28\xb5\x2f\xfd"  # a standard zstd frame: `zstd -d -D DICT` reads it
    assert zstandard.ZstdDecompressor(dict_data=manifest_dictionary()).decompress(stored) == plain
    with pytest.raises(zstandard.ZstdError):  # the dictionary is needed: the frame refers into it
        zstandard.ZstdDecompressor().decompress(stored)
    assert zstandard.get_frame_parameters(stored).dict_id == 0  # raw content: the format names it
    assert b'"baseline_sha256":"' in MANIFEST_DICTIONARY


def _with_window_descriptor(frame: bytes, window_log: int) -> bytes:
    """A single-segment zstd frame rewritten to declare a `window_log` window (RFC 8878 §3.1.1.1)."""
    descriptor = frame[4]
    assert descriptor & 0x20 and descriptor >> 6 == 1 and not descriptor & 3  # single segment, 2-byte FCS
    window_descriptor = (window_log - 10) << 3
    return frame[:4] + bytes([descriptor & ~0x20, window_descriptor]) + frame[5:]


def _package_around_manifest(blob: bytes, stored: bytes, declared: int) -> bytes:
    """`blob` with its stored manifest replaced by `stored`, the header declaring `declared` JSON bytes."""
    fields, _, frame, _ = split(blob)
    fields[5], fields[6] = len(stored), declared
    return assemble(fields, b"", frame, fix_sizes=False, stored_manifest=stored)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("sized", "corrupt manifest: the zstd frame declares 536870912 bytes, the package header 1000"),
        ("unsized", "corrupt manifest: the zstd frame does not declare its size"),
        ("lying", "corrupt manifest: zstd could not decompress it"),
    ],
)
def test_manifest_bomb_is_refused_before_decompression(unsigned: bytes, bomb_frames, kind: str, message: str):
    with pytest.raises(PackageError, match=message):
        read_package(_package_around_manifest(unsigned, bomb_frames[kind], 1000))


def test_manifest_frame_needing_a_large_window_or_another_dictionary_is_refused(unsigned: bytes) -> None:
    plain = manifest_json(unsigned)
    wide = _with_window_descriptor(zstandard.ZstdCompressor(level=1).compress(plain), 27)
    assert zstandard.get_frame_parameters(wide).window_size == 1 << 27
    assert zstandard.get_frame_parameters(wide).content_size == len(plain)
    with pytest.raises(PackageError, match="corrupt manifest: .*window"):
        read_package(_package_around_manifest(unsigned, wide, len(plain)))
    # A frame that names a trained dictionary (id != 0) is not one this format writes.
    trained = zstandard.train_dictionary(1024, [plain[i:] + plain[:i] for i in range(0, len(plain), 7)])
    named = zstandard.ZstdCompressor(dict_data=trained, write_dict_id=True).compress(plain)
    assert zstandard.get_frame_parameters(named).dict_id != 0
    with pytest.raises(PackageError, match="corrupt manifest: the zstd frame names a dictionary id"):
        read_package(_package_around_manifest(unsigned, named, len(plain)))
    # The JSON is canonical, the frame need not be: one made without the dictionary (another encoder's
    # choice) still decodes to the same JSON and reads. A signature covers the stored frame as it is.
    plain_frame = zstandard.ZstdCompressor(level=3).compress(plain)
    other = read_package(_package_around_manifest(unsigned, plain_frame, len(plain)))
    assert other.package == read_package(unsigned).package


def test_relocation_table_over_the_record_bound_is_refused_before_decompression(unsigned: bytes) -> None:
    def edit(document):
        document["sections"]["relocations"]["size"] = 24 * (limits.MAX_RELOCATIONS + 1)
    with pytest.raises(PackageError, match=r"manifest sections\.relocations\.size"):
        read_package(_edit_document(unsigned, edit))
