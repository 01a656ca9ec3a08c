"""Whether a process that just exec'd is past its dynamic linker's start-up: its libraries are mapped.

When the kernel reports an exec, the new program and its dynamic linker (ld.so) are mapped, nothing
else: ld.so maps the DT_NEEDED libraries, relocates them and only then runs constructors and `main`.
A library baseline cannot be found before that, and an executable's package may import from a
library that is not there yet. So the agent asks, cheaply and without stopping the process, what
debuggers ask (glibc's <link.h> interface, also kept by musl):

- no interpreter (AT_BASE 0 in /proc/PID/auxv): a static program, READY at exec;
- the executable's DT_DEBUG entry, in memory, still 0: ld.so has not started loading, LOADING;
- DT_DEBUG names ld.so's `struct r_debug`: `r_state` is RT_ADD while objects are being added and
  RT_CONSISTENT once every start-up object is mapped and relocated (glibc sets it right before it
  runs the constructors), READY.

glibc fills DT_DEBUG a few instructions before it sets RT_ADD, so a READY can, in that window, come
before the libraries; the agent therefore checks a young process again a few times after it is
READY (loader/agent.py). Every value read is the target's: it only decides when the agent looks,
never what it writes, and the agent stops waiting after a bounded time whatever the target says.
"""

from __future__ import annotations

import os
import struct
from enum import Enum

from hpkg.elf.constants import DT_DEBUG, DT_NULL, PT_DYNAMIC, PT_PHDR
from hpkg.elf.structs import DYN, PHDR, DynamicEntry, ProgramHeader

AT_NULL, AT_PHDR, AT_PHNUM, AT_BASE = 0, 3, 5, 7  # <elf.h> auxiliary vector types
_AUXV_ENTRY = struct.Struct("<QQ")
_R_STATE = struct.Struct("<i")
R_STATE_OFFSET = 24  # struct r_debug { int r_version; link_map *r_map; ElfW(Addr) r_brk; r_state; ... }
RT_CONSISTENT = 0
MAX_PROGRAM_HEADERS = 64
MAX_DYNAMIC_ENTRIES = 512


class Startup(Enum):
    """Where a new process is in its start-up."""

    READY = "ready"  # static, or ld.so has mapped and relocated every start-up object
    LOADING = "loading"  # ld.so is still at work
    UNKNOWN = "unknown"  # no DT_DEBUG to ask (the agent relies on its later checks)
    GONE = "gone"  # exited (or its memory cannot be read)


def _auxv(pid: int) -> dict[int, int]:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        blob = f.read(4096)
    values: dict[int, int] = {}
    for offset in range(0, len(blob) - _AUXV_ENTRY.size + 1, _AUXV_ENTRY.size):
        kind, value = _AUXV_ENTRY.unpack_from(blob, offset)
        if kind == AT_NULL:
            break
        values[kind] = value
    return values


def _read(mem: int, address: int, size: int) -> bytes:
    data = os.pread(mem, size, address)
    if len(data) != size:
        raise OSError("short read")
    return data


def startup_state(pid: int) -> Startup:
    """How far process `pid` is in its start-up (see the module's docstring); never stops it."""
    try:
        aux = _auxv(pid)
        if not aux.get(AT_BASE):
            return Startup.READY  # no interpreter: everything was mapped by the kernel
        phdr_address, count = aux.get(AT_PHDR, 0), min(aux.get(AT_PHNUM, 0), MAX_PROGRAM_HEADERS)
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return _from_memory(mem, phdr_address, count)
        finally:
            os.close(mem)
    except (OSError, struct.error):
        return Startup.GONE


def _from_memory(mem: int, phdr_address: int, count: int) -> Startup:
    table = _read(mem, phdr_address, count * PHDR.size)
    headers = [ProgramHeader.unpack_from(table, i * PHDR.size) for i in range(count)]
    phdr = next((h for h in headers if h.type == PT_PHDR), None)
    dynamic = next((h for h in headers if h.type == PT_DYNAMIC), None)
    if phdr is None or dynamic is None:
        return Startup.UNKNOWN
    load_bias = phdr_address - phdr.vaddr
    entries = min(dynamic.memsz // DYN.size, MAX_DYNAMIC_ENTRIES)
    block = _read(mem, load_bias + dynamic.vaddr, entries * DYN.size)
    for i in range(entries):
        entry = DynamicEntry.unpack_from(block, i * DYN.size)
        if entry.tag == DT_NULL:
            break
        if entry.tag == DT_DEBUG:
            if entry.value == 0:
                return Startup.LOADING
            (state,) = _R_STATE.unpack(_read(mem, entry.value + R_STATE_OFFSET, _R_STATE.size))
            return Startup.READY if state == RT_CONSISTENT else Startup.LOADING
    return Startup.UNKNOWN
