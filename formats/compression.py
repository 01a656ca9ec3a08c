"""zstd for the payload, with the decompressed size declared up front and enforced.

Why not just `decompress(max_output_size=...)`: python-zstandard allocates whatever content size the
frame header claims, whatever the cap. So the reader checks the frame header against the package
header (which is bounded by limits.MAX_PAYLOAD_SIZE) before it decompresses anything, and bounds the
decoder's window so a crafted frame cannot make zstd itself allocate a large history buffer.
"""

from __future__ import annotations

import zstandard

from hpkg.errors import PackageError
from hpkg.formats import limits

# Chosen by measurement on real payloads (see formats/SPEC.md, "Compression level").
COMPRESSION_LEVEL = 19
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def compress_payload(payload: bytes) -> bytes:
    """One zstd frame holding `payload`, with its content size in the frame header and no checksum."""
    params = zstandard.ZstdCompressionParameters.from_level(
        COMPRESSION_LEVEL, source_size=len(payload), write_content_size=True, write_checksum=False,
        write_dict_id=False, threads=0,
    )
    # Keep the window inside what every reader accepts (levels 1-19 on payloads under the limit do).
    if params.window_log > limits.MAX_ZSTD_WINDOW.bit_length() - 1:
        raise PackageError("internal: the chosen zstd level needs a window larger than readers accept")
    return zstandard.ZstdCompressor(compression_params=params).compress(payload)


def decompress_payload(frame: bytes, declared_size: int) -> bytes:
    """The payload inside `frame`, which must be one zstd frame of exactly `declared_size` bytes."""
    if declared_size > limits.MAX_PAYLOAD_SIZE:
        raise PackageError(f"declared payload size {declared_size} is over {limits.MAX_PAYLOAD_SIZE}")
    if frame[:4] != _ZSTD_MAGIC:
        raise PackageError("corrupt payload: not a zstd frame")
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise PackageError(f"corrupt payload: unreadable zstd frame header ({exc})") from None
    if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise PackageError("corrupt payload: the zstd frame does not declare its size; not decompressing")
    if params.content_size != declared_size:
        raise PackageError(
            f"corrupt payload: the zstd frame declares {params.content_size} bytes, the package header"
            f" {declared_size}; refusing to decompress"
        )
    if params.window_size > limits.MAX_ZSTD_WINDOW:
        raise PackageError(
            f"corrupt payload: the zstd frame asks for a {params.window_size}-byte window, over the limit of"
            f" {limits.MAX_ZSTD_WINDOW}"
        )
    if params.dict_id:
        raise PackageError("corrupt payload: the zstd frame needs a dictionary")
    try:
        # content_size is now known and bounded: decompress allocates exactly that and fails if the
        # frame would produce more or less; allow_extra_data=False refuses bytes after the frame.
        dctx = zstandard.ZstdDecompressor(max_window_size=limits.MAX_ZSTD_WINDOW)
        payload = dctx.decompress(frame, max_output_size=declared_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise PackageError(f"corrupt payload: zstd could not decompress it ({exc})") from None
    if len(payload) != declared_size:
        raise PackageError(f"corrupt payload: decompressed to {len(payload)} bytes, expected {declared_size}")
    return payload
