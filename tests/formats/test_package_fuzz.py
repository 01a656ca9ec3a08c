"""Property tests: mutated, truncated, extended and re-typed packages end in the reader's own errors only."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from package_crafting import assemble, split, with_sections

from hpkg.errors import PackageError, VerifyError
from hpkg.formats import Package, read_package, verify_signature, write_package
from hpkg.formats.header import HEADER_SIZE

SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def blobs(real_package: Package, signing_key) -> dict[str, bytes]:
    return {"unsigned": write_package(real_package), "signed": write_package(real_package, signing_key)}


def _read_everything(blob: bytes, public_key) -> None:
    """Every reader entry point on `blob`; only the reader's own errors may escape."""
    try:
        loaded = read_package(blob)
    except (PackageError, VerifyError):
        loaded = None
    if loaded is not None and loaded.signed:
        with contextlib.suppress(VerifyError):
            verify_signature(loaded, public_key)
    with contextlib.suppress(PackageError, VerifyError):
        read_package(blob, public_key)


mutation = st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255))


@SETTINGS
@given(
    which=st.sampled_from(["unsigned", "signed"]),
    mutations=st.lists(mutation, min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
    extension=st.binary(max_size=64),
)
def test_mutated_truncated_and_extended_packages_raise_only_reader_errors(
    blobs, signing_key, which: str, mutations, cut, extension: bytes
) -> None:
    blob = bytearray(blobs[which])
    for position, value in mutations:
        blob[position % len(blob)] = value
    if cut is not None:
        del blob[cut % (len(blob) + 1) :]
    blob += extension
    changed = bytes(blob) != blobs[which]
    _read_everything(bytes(blob), signing_key.public_key())
    if changed and which == "signed":
        # Whatever changed, a signed package must no longer verify.
        with pytest.raises((PackageError, VerifyError)):
            read_package(bytes(blob), signing_key.public_key())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON document."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


@SETTINGS
@given(data=st.data())
def test_manifest_values_of_any_type_raise_only_reader_errors(blobs, signing_key, data) -> None:
    # Hostile JSON that is well-formed and canonical reaches the field decoders: they must cope.
    fields, document, frame, _ = split(blobs["unsigned"])
    document = copy.deepcopy(document)
    path = data.draw(st.sampled_from(_paths(document)))
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values, label="value")
    _read_everything(assemble(fields, document, frame), signing_key.public_key())


@SETTINGS
@given(mutations=st.lists(mutation, min_size=1, max_size=6), cut=st.none() | st.integers(min_value=0))
def test_damaged_zstd_frames_raise_only_reader_errors(blobs, signing_key, mutations, cut) -> None:
    # The payload digest is recomputed, so the damaged frame reaches the decompressor itself.
    fields, document, frame, _ = split(blobs["unsigned"])
    damaged = bytearray(frame)
    for position, value in mutations:
        damaged[position % len(damaged)] = value
    if cut is not None:
        del damaged[cut % (len(damaged) + 1) :]
    _read_everything(assemble(fields, document, bytes(damaged)), signing_key.public_key())


@SETTINGS
@given(mutations=st.lists(mutation, min_size=1, max_size=6), cut=st.none() | st.integers(min_value=0),
       declared_delta=st.sampled_from([0, 0, 0, -1, 1]))
def test_damaged_manifest_frames_raise_only_reader_errors(blobs, signing_key, mutations, cut,
                                                          declared_delta: int) -> None:
    # Sizes in the header stay consistent with the file, so the damaged frame reaches the manifest decoder.
    fields, _, frame, _ = split(blobs["unsigned"])
    stored = bytearray(blobs["unsigned"][HEADER_SIZE : HEADER_SIZE + fields[5]])
    for position, value in mutations:
        stored[position % len(stored)] = value
    if cut is not None:
        del stored[max(1, cut % (len(stored) + 1)) :]
    fields[5], fields[6] = len(stored), fields[6] + declared_delta
    blob = assemble(fields, b"", frame, fix_sizes=False, stored_manifest=bytes(stored))
    _read_everything(blob, signing_key.public_key())


@SETTINGS
@given(
    section=st.sampled_from(["code", "rodata", "data", "relocations"]),
    content=st.binary(max_size=200) | st.lists(st.binary(min_size=24, max_size=24), max_size=8).map(b"".join),
)
def test_arbitrary_section_contents_raise_only_reader_errors(blobs, signing_key, section, content) -> None:
    # Sizes and digests are consistent, so hostile relocation records and short sections reach validation.
    _read_everything(with_sections(blobs["unsigned"], **{section: content}), signing_key.public_key())
