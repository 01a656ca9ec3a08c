"""The order in which a process's dynamic linker searches its objects: its link map, read from memory.

glibc's dynamic linker publishes the objects it loaded through the debugger interface of <link.h>:
at start-up it writes the address of its `struct r_debug` into the executable's DT_DEBUG entry, and
`r_debug.r_map` heads the list of `struct link_map`, in load order — the executable, the preloads,
the DT_NEEDED libraries breadth-first, then what dlopen added. That is the order of the global
lookup scope a symbol reference of the executable is resolved in (for the objects loaded at
start-up, the ones that can hold what a fix newly names), so an import is looked up in this order,
not in address order (libraries are mapped top-down: address order is close to the reverse).

Only addresses are read from the target, and every one of them only selects among the images
/proc already lists (by load bias); a garbled or cyclic list ends the walk, and the images it did
not name follow in address order.
"""

from __future__ import annotations

import struct

from hpkg.elf.constants import DT_DEBUG, PT_DYNAMIC
from hpkg.elf.file import ElfFile
from hpkg.elf.structs import DYN, DynamicEntry
from hpkg.errors import ImageError, TargetError
from hpkg.loader.process import Process
from hpkg.loader.procfs import RuntimeImage

R_MAP_OFFSET = 8  # struct r_debug { int r_version; struct link_map *r_map; ... } on x86-64
# struct link_map { ElfW(Addr) l_addr; char *l_name; ElfW(Dyn) *l_ld; struct link_map *l_next, *l_prev; }
_LINK_MAP = struct.Struct("<QQQQ")  # l_addr, l_name, l_ld, l_next
MAX_OBJECTS = 4096  # a bound on the walk: a process with more objects is searched in address order after
MAX_DYNAMIC_ENTRIES = 512


def _debug_address(process: Process, executable: RuntimeImage, path: str) -> int:
    """The r_debug address the dynamic linker left in the executable's DT_DEBUG entry (0 if none).

    The file says where .dynamic is and how long; the value is only in memory (written at start-up).
    """
    with ElfFile.mapped(path) as elf:
        count = len(elf.dynamic_entries())
        dynamic = next((p for p in elf.program_headers if p.type == PT_DYNAMIC), None)
    if not count or dynamic is None:
        return 0
    count = min(count, MAX_DYNAMIC_ENTRIES)
    table = process.read(executable.runtime_address(dynamic.vaddr), count * DYN.size)
    for i in range(count):
        entry = DynamicEntry.unpack_from(table, i * DYN.size)
        if entry.tag == DT_DEBUG:
            return entry.value
    return 0


def search_order(
    process: Process, images: list[RuntimeImage], executable: RuntimeImage | None, path: str
) -> list[RuntimeImage]:
    """`images` in the dynamic linker's search order: the executable (read from `path`) first, then
    the link map's order, then any image the link map did not name, by address."""
    by_bias: dict[int, RuntimeImage] = {}
    for image in sorted(images, key=lambda i: i.start):
        by_bias.setdefault(image.load_bias, image)
    ordered: list[RuntimeImage] = []
    if executable is not None:
        try:
            ordered = _walk(process, _debug_address(process, executable, path), by_bias)
        except (TargetError, ImageError, struct.error):
            ordered = []
        if not ordered or ordered[0] is not executable:
            ordered = [executable] + [i for i in ordered if i is not executable]
    named = {id(i) for i in ordered}
    return ordered + sorted((i for i in images if id(i) not in named), key=lambda i: i.start)


def _walk(process: Process, r_debug: int, by_bias: dict[int, RuntimeImage]) -> list[RuntimeImage]:
    """The images the link map names, in its order (each once)."""
    if not r_debug:
        return []
    ordered: list[RuntimeImage] = []
    node = struct.unpack("<Q", process.read(r_debug + R_MAP_OFFSET, 8))[0]
    seen: set[int] = set()
    while node and node not in seen and len(seen) < MAX_OBJECTS:
        seen.add(node)
        l_addr, _name, _ld, node_next = _LINK_MAP.unpack(process.read(node, _LINK_MAP.size))
        image = by_bias.get(l_addr)
        if image is not None and image not in ordered:
            ordered.append(image)
        node = node_next
    return ordered
