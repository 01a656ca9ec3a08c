"""The unwind section of a PE32+ package: `.pdata` entries and UNWIND_INFO for the package's code.

On Windows x64 every function that touches the stack needs a RUNTIME_FUNCTION, or the unwinder
(exceptions, `RtlVirtualUnwind`, a debugger's stack walk) takes it for a leaf and reads a wrong
return address. The fix's own entries are copied: UNWIND_INFO holds only offsets within the
function (prolog codes, frame register), so it is valid wherever the code lands; the section's layout
is hpkg.pe.package_unwind's (formats/SPEC.md, format 1.4). An UNWIND_INFO that names an exception
handler (its handler data has no length the builder can know) or chains to another entry is not
carried: the function is reported, as the ELF builder reports a missing FDE (`unwind-info-missing`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hpkg.builder.model import Function, Image
from hpkg.builder.verdict import Reason
from hpkg.pe.constants import (
    IMAGE_DIRECTORY_ENTRY_EXCEPTION,
    UNW_FLAG_CHAININFO,
    UNW_FLAG_EHANDLER,
    UNW_FLAG_UHANDLER,
)
from hpkg.pe.headers import PeHeaders
from hpkg.pe.package_unwind import encode_package_pdata
from hpkg.pe.pdata import UNWIND_INFO_HEADER, RuntimeFunction, runtime_functions


@dataclass(frozen=True)
class PdataSection:
    """The package's unwind section for a PE baseline, the functions it covers and why others are not."""

    content: bytes
    covered: frozenset[int]  # NEW addresses of the functions with an entry
    reasons: tuple[Reason, ...]


def unwind_info_size(read: Callable[[int, int], bytes], rva: int) -> tuple[int, int] | None:
    """(flags, size) of the UNWIND_INFO at `rva` without its handler or chain part; None if unreadable."""
    head = read(rva, UNWIND_INFO_HEADER.size)
    if len(head) < UNWIND_INFO_HEADER.size:
        return None
    version_flags, _, code_count, _ = UNWIND_INFO_HEADER.unpack(head)
    # The unwind codes are 2 bytes each, padded to an even count.
    return version_flags >> 3, UNWIND_INFO_HEADER.size + 2 * ((code_count + 1) & ~1)


def _entries_by_begin(image: Image, headers: PeHeaders) -> dict[int, RuntimeFunction]:
    rva, size = headers.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
    read = _rva_reader(image, headers)
    return {e.begin: e for e in runtime_functions(read, rva, size)}


def _rva_reader(image: Image, headers: PeHeaders) -> Callable[[int, int], bytes]:
    return lambda rva, size: image.read(headers.image_base + rva, size)


def pdata_unwind(
    image: Image,
    headers: PeHeaders,
    functions: Iterable[tuple[str, Function]],
    code_offset: Callable[[int], int | None],
) -> PdataSection:
    """The unwind section for the package functions of the fix `image` (named, with their NEW
    `Function`), each at `code_offset(NEW address)` in the package's code."""
    entries = _entries_by_begin(image, headers)
    read = _rva_reader(image, headers)
    records: list[tuple[int, int, bytes]] = []
    covered: set[int] = set()
    reasons: list[Reason] = []
    for name, fn in functions:
        entry = entries.get(fn.address - headers.image_base)
        offset = code_offset(fn.address)
        if entry is None or offset is None:
            continue  # a leaf function: no stack use, no entry needed
        shape = unwind_info_size(read, entry.unwind)
        problem = None
        if shape is None:
            problem = "its UNWIND_INFO lies outside the image"
        elif shape[0] & (UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER):
            problem = "its UNWIND_INFO names an exception handler, whose data the builder does not copy"
        elif shape[0] & UNW_FLAG_CHAININFO:
            problem = "its UNWIND_INFO chains to another entry"
        elif entry.end - entry.begin != fn.size:
            problem = f"its .pdata entry covers {entry.end - entry.begin} of its {fn.size} bytes"
        if problem is not None:
            reasons.append(
                Reason(
                    "unwind-info-missing",
                    name,
                    f"function '{name}' has no unwind rules the package can carry ({problem}): a stack"
                    " walk or an exception through it would read a wrong return address",
                )
            )
            continue
        assert shape is not None
        info = read(entry.unwind, shape[1])
        records.append((offset, offset + fn.size, info))
        covered.add(fn.address)
    return PdataSection(encode_package_pdata(records), frozenset(covered), tuple(reasons))
