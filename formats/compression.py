"""zstd for the payload and the manifest, each with its decompressed size declared up front and enforced.

Why not just `decompress(max_output_size=...)`: python-zstandard allocates whatever content size the
frame header claims, whatever the cap. So the reader checks the frame header against the package
header (whose sizes are bounded by formats/limits.py) before it decompresses anything, and bounds the
decoder's window so a crafted frame cannot make zstd itself allocate a large history buffer.
The manifest frame is compressed with the format's fixed dictionary (formats/dictionary.py); the
payload frame with none.
"""

from __future__ import annotations

import zstandard

from hpkg.errors import PackageError
from hpkg.formats import limits
from hpkg.formats.dictionary import manifest_dictionary

# Chosen by measurement on real payloads (see formats/SPEC.md, "Compression level").
COMPRESSION_LEVEL = 19
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _compress(data: bytes, dictionary: zstandard.ZstdCompressionDict | None) -> bytes:
    """One zstd frame holding `data`, with its content size in the frame header and no checksum."""
    params = zstandard.ZstdCompressionParameters.from_level(
        COMPRESSION_LEVEL, source_size=len(data), write_content_size=True, write_checksum=False,
        write_dict_id=False, threads=0,
    )
    # Keep the window inside what every reader accepts (levels 1-19 on inputs under the limits do).
    if params.window_log > limits.MAX_ZSTD_WINDOW.bit_length() - 1:
        raise PackageError("internal: the chosen zstd level needs a window larger than readers accept")
    return zstandard.ZstdCompressor(compression_params=params, dict_data=dictionary).compress(data)


def _decompress(
    frame: bytes, declared_size: int, limit: int, what: str, dictionary: zstandard.ZstdCompressionDict | None
) -> bytes:
    """The `declared_size` bytes inside `frame`, which must be exactly one zstd frame of that size."""
    if declared_size > limit:
        raise PackageError(f"declared {what} size {declared_size} is over {limit}")
    if frame[:4] != _ZSTD_MAGIC:
        raise PackageError(f"corrupt {what}: not a zstd frame")
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise PackageError(f"corrupt {what}: unreadable zstd frame header ({exc})") from None
    if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise PackageError(f"corrupt {what}: the zstd frame does not declare its size; not decompressing")
    if params.content_size != declared_size:
        raise PackageError(
            f"corrupt {what}: the zstd frame declares {params.content_size} bytes, the package header"
            f" {declared_size}; refusing to decompress"
        )
    if params.window_size > limits.MAX_ZSTD_WINDOW:
        raise PackageError(
            f"corrupt {what}: the zstd frame asks for a {params.window_size}-byte window, over the limit of"
            f" {limits.MAX_ZSTD_WINDOW}"
        )
    if params.dict_id:
        # The manifest's dictionary is raw content, which has no id: a frame naming one is not ours.
        raise PackageError(f"corrupt {what}: the zstd frame names a dictionary id")
    try:
        # content_size is now known and bounded: decompress allocates exactly that and fails if the
        # frame would produce more or less; allow_extra_data=False refuses bytes after the frame.
        dctx = zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=limits.MAX_ZSTD_WINDOW)
        data = dctx.decompress(frame, max_output_size=declared_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise PackageError(f"corrupt {what}: zstd could not decompress it ({exc})") from None
    if len(data) != declared_size:
        raise PackageError(f"corrupt {what}: decompressed to {len(data)} bytes, expected {declared_size}")
    return data


def compress_payload(payload: bytes) -> bytes:
    """The payload frame: no dictionary."""
    return _compress(payload, None)


def decompress_payload(frame: bytes, declared_size: int) -> bytes:
    """The payload inside `frame`, which must be one zstd frame of exactly `declared_size` bytes."""
    return _decompress(frame, declared_size, limits.MAX_PAYLOAD_SIZE, "payload", None)


def compress_manifest(manifest_json: bytes) -> bytes:
    """The manifest frame: the canonical JSON compressed with the format's manifest dictionary."""
    return _compress(manifest_json, manifest_dictionary())


def decompress_manifest(frame: bytes, declared_size: int) -> bytes:
    """The canonical JSON in the manifest `frame`: exactly `declared_size` bytes, bounded like the payload."""
    return _decompress(frame, declared_size, limits.MAX_MANIFEST_SIZE, "manifest", manifest_dictionary())
