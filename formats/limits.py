"""Hard bounds the reader enforces before it allocates anything; a package beyond them is refused.

Hotpatches are small (tens of kilobytes); the bounds leave wide room for real ones while keeping
a hostile file from making the reader allocate or work without limit.
"""

from __future__ import annotations

import os

from hpkg.errors import HpkgError

MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # bytes of canonical JSON, after decompression
MAX_MANIFEST_FRAME_SIZE = MAX_MANIFEST_SIZE + 64 * 1024  # the compressed manifest in the file
MAX_PAYLOAD_SIZE = 64 * 1024 * 1024  # bytes after decompression: code + rodata + data + relocations
MAX_COMPRESSED_SIZE = MAX_PAYLOAD_SIZE + 1024 * 1024  # zstd never grows input by more than this
MAX_BSS_SIZE = 256 * 1024 * 1024  # zero-fill the loader maps; it costs no file bytes
MAX_ZSTD_WINDOW = 1 << 23  # 8 MiB: bounds the decompressor's own memory (zstd levels <= 19 use less)
MAX_RELOCATIONS = 1 << 18  # records in the relocation table: ~50 MB of Python objects at most
MAX_RECORDS = 16384  # per list in the manifest: functions, added functions, data objects, imports
MAX_NAME_LENGTH = 4096  # characters in a symbol name or other manifest string
MAX_PRE_IMAGE = 32  # bytes the loader may overwrite at one patch site
MAX_BUILD_ID = 64  # bytes of a GNU build-id (usually 20)


def read_bounded(
    path: str | os.PathLike[str], limit: int, what: str, error: type[HpkgError], too_large: str
) -> bytes:
    """The bytes of a file of at most `limit` bytes, reading no more than one byte past it."""
    try:
        with open(path, "rb") as f:
            blob = f.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {os.fspath(path)}: {exc.strerror or exc}") from None
    if len(blob) > limit:
        raise error(f"{os.fspath(path)} {too_large}")
    return blob
