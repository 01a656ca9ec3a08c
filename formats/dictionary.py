"""The manifest dictionary: fixed zstd raw content that primes the manifest compressor with the key names.

A manifest is small (about 1 KB of canonical JSON) and most of it is key names; zstd alone cannot
learn them from so little input, so writer and reader both start from this text. It is part of
format version 1: the bytes never change within a major version, and formats/SPEC.md records their
SHA-256 (MANIFEST_DICTIONARY_SHA256, checked by the tests). It is two canonical manifests of a
made-up package, one with every list populated and one with only a replaced function, digests as
zeros, so that the long runs of keys and common values (empty sections, `"supersedes":null`) match.
"""

from __future__ import annotations

import hashlib

import zstandard

MANIFEST_DICTIONARY = (
    '{"added_functions":[{"code_offset":0,"code_size":1,"name":"main"}],'
    '"allowed_overrides":["ipa-ra"],"bss_size":0,"data_objects":[{"name":"main","offset":0,'
    '"section":"rodata","size":0},{"name":"main","offset":0,"section":"data","size":0},'
    '{"name":"main","offset":0,"section":"bss","size":0}],"functions":[{"baseline_address":4096,'
    '"baseline_sha256":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"baseline_size":1,"code_offset":0,"code_size":1,"name":"main","pre_image":"0000000000"}],'
    '"identity":{"builder_version":"hpkg 0.1.0","package_id":"0","patch_level":1,"supersedes":null},'
    '"imports":[{"name":"printf","version":"GLIBC_2.2.5"},{"name":"main","version":null}],'
    '"payload_sha256":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"sections":{"code":{"sha256":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"size":0},"data":{"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",'
    '"size":0},'
    '"relocations":{"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",'
    '"size":0},"rodata":{"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",'
    '"size":0}},"target":{"build_id":"0000000000000000000000000000000000000000",'
    '"file_format":"elf64",'
    '"file_sha256":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"image_size":4096,"machine":"x86_64","soname_hint":"main"}}\n'
    '{"added_functions":[],"allowed_overrides":[],"bss_size":0,"data_objects":[],'
    '"functions":[{"baseline_address":4096,'
    '"baseline_sha256":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"baseline_size":1,"code_offset":0,"code_size":1,"name":"main","pre_image":"0000000000"}],'
    '"identity":{"builder_version":"hpkg 0.1.0","package_id":"0","patch_level":1,"supersedes":null},'
    '"imports":[],'
    '"payload_sha256":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"sections":{"code":{"sha256":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"size":0},"data":{"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",'
    '"size":0},'
    '"relocations":{"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",'
    '"size":0},"rodata":{"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",'
    '"size":0}},"target":{"build_id":"0000000000000000000000000000000000000000",'
    '"file_format":"elf64",'
    '"file_sha256":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"image_size":4096,"machine":"x86_64","soname_hint":"main"}}\n'
).encode("ascii")
MANIFEST_DICTIONARY_SHA256 = "b234ff91b8b2de824d566eebf5f13688f99903d818d3d2a41353e11e984a12e7"


def manifest_dictionary() -> zstandard.ZstdCompressionDict:
    """The dictionary as zstd raw content (no dictionary id: the format, not the frame, names it)."""
    return zstandard.ZstdCompressionDict(MANIFEST_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


if hashlib.sha256(MANIFEST_DICTIONARY).hexdigest() != MANIFEST_DICTIONARY_SHA256:  # pragma: no cover
    raise ImportError("hpkg.formats.dictionary: the manifest dictionary differs from format version 1's")
