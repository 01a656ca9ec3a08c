"""The optional header's CheckSum: the algorithm of imagehlp's CheckSumMappedFile.

The file as little-endian 16-bit words (an odd last byte padded with zero), the CheckSum field itself
counted as zero, summed with the carry folded back in after every addition, then the file's length
added. Windows checks it only for drivers and a few system DLLs; a patched file keeps it right anyway.
"""

from __future__ import annotations

import array
import sys

CHECKSUM_FIELD = 64  # byte offset of CheckSum in IMAGE_OPTIONAL_HEADER64


def pe_checksum(data: bytes, optional_header_offset: int) -> int:
    """The CheckSum of a PE file whose optional header starts at `optional_header_offset`."""
    at = optional_header_offset + CHECKSUM_FIELD
    blob = data[:at] + bytes(4) + data[at + 4 :]
    if len(blob) % 2:
        blob += b"\0"
    words = array.array("H", blob)
    if sys.byteorder != "little":
        words.byteswap()
    total = sum(words)  # folded below: the end-around carry of a 16-bit one's-complement sum
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFF_FFFF
