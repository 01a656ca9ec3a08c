"""Make Wine's unwinder find a Windows package's RUNTIME_FUNCTIONs, without calling into the process.

Wine's RtlLookupFunctionEntry finds a PC's function in the loaded module that holds it (its exception
directory) and, for a PC in no module, in ntdll's list of dynamic function tables, which
RtlAddFunctionTable appends to: `dynamic_unwind_list`, a doubly linked `struct list` of

    struct dynamic_unwind_entry {      /* Wine 8.0, x86-64: 64 bytes */
        struct list entry;             /* +0 next, +8 prev */
        ULONG_PTR base, end;           /* +16, +24: [base, end) is looked up in this table */
        RUNTIME_FUNCTION *table;       /* +32: sorted; RVAs relative to base */
        DWORD count, max_count;        /* +40, +44 */
        void *callback, *context;      /* +48, +56: none */
    };

guarded by the critical section `dynamic_unwind_section`. Calling RtlAddFunctionTable from outside
would mean running Windows code (heap, lock, TEB) on a hijacked thread; instead, while every thread is
stopped and that lock is free (LockCount -1, no owner: no thread is between Enter and Leave), the
loader links an entry that lives in the package's own memory (a read-write page, since a later
RtlAddFunctionTable or RtlDeleteFunctionTable rewrites its neighbours' links) at the list's tail,
exactly as `list_add_tail` does, and revert unlinks it the same way.

Both statics are found by name in ntdll.dll's COFF symbol table (Debian's Wine keeps it), and only
believed when the exported RtlAddFunctionTable refers to both (rip-relative) and the list walks back
to its head: anything else is refused (`unwind-registration-unsupported`) before anything changes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.errors import ImageError, RefusedError, TargetError
from hpkg.loader.bounds import mapped_file_of
from hpkg.loader.pe_file import PeFile
from hpkg.loader.pe_process import pe_images
from hpkg.loader.process import Process, StoppedThreads
from hpkg.loader.record import WineUnwindRegistration
from hpkg.pe.coff_symbols import symbol_rvas
from hpkg.pe.constants import IMAGE_DIRECTORY_ENTRY_EXPORT
from hpkg.pe.exports import find_export
from hpkg.pe.pdata import RUNTIME_FUNCTION

REASON = "unwind-registration-unsupported"
LIST_SYMBOL, LOCK_SYMBOL = "dynamic_unwind_list", "dynamic_unwind_section"
ADD_FUNCTION_TABLE = "RtlAddFunctionTable"
ENTRY = struct.Struct("<QQQQQIIQQ")  # struct dynamic_unwind_entry (above)
ENTRY_SIZE = ENTRY.size
LINKS = struct.Struct("<QQ")  # struct list: next, prev
# RTL_CRITICAL_SECTION: DebugInfo, LockCount, RecursionCount, OwningThread, LockSemaphore, SpinCount.
CRITICAL_SECTION = struct.Struct("<QiiQQQ")
SCAN_BYTES = 512  # of RtlAddFunctionTable's code searched for the references to both statics
MAX_ENTRIES = 1 << 16  # a longer list is not a list


@dataclass(frozen=True)
class WineUnwindList:
    """Where ntdll keeps its dynamic function tables in one process: the list head and its lock."""

    list_head: int
    lock: int

    def registration(self, entry: int) -> WineUnwindRegistration:
        return WineUnwindRegistration(self.list_head, self.lock, entry)


def _refuse(why: str) -> RefusedError:
    return RefusedError(f"{REASON}: {why}")


def _refers_to(code: bytes, address: int, target: int) -> bool:
    """Whether some rip-relative disp32 in `code` (at `address`), ending an instruction, reaches `target`."""
    return any(
        address + i + 4 + struct.unpack_from("<i", code, i)[0] == target for i in range(len(code) - 3)
    )


def find_wine_unwind_list(process: Process) -> WineUnwindList:
    """ntdll's list of dynamic function tables in `process`, proven; RefusedError (nothing changed) if not."""
    ntdll = next((i for i in pe_images(process) if i.path.lower().endswith("/ntdll.dll")), None)
    if ntdll is None:
        raise _refuse(f"process {process.pid} maps no ntdll.dll: not a Wine process hpkg knows")
    try:
        pe = PeFile.open(mapped_file_of(process.pid, ntdll))
        found = symbol_rvas(pe.headers, pe.data, (LIST_SYMBOL, LOCK_SYMBOL))
        export = find_export(pe.read_rva, *pe.headers.directory(IMAGE_DIRECTORY_ENTRY_EXPORT),
                             ADD_FUNCTION_TABLE, str(pe.path))
    except ImageError as exc:
        raise _refuse(f"cannot read {ntdll.path}: {exc}") from None
    if LIST_SYMBOL not in found or LOCK_SYMBOL not in found or export is None or export.rva is None:
        raise _refuse(
            f"{ntdll.path} names no {LIST_SYMBOL} and {LOCK_SYMBOL} in its symbol table (a stripped or other"
            " Wine build): the package's functions could not be registered with Wine's unwinder"
        )
    code = pe.read_rva(export.rva, SCAN_BYTES)
    if not all(_refers_to(code, export.rva, found[name]) for name in (LIST_SYMBOL, LOCK_SYMBOL)):
        raise _refuse(f"{ADD_FUNCTION_TABLE} of {ntdll.path} does not use the {LIST_SYMBOL} its symbols name")
    located = WineUnwindList(ntdll.start + found[LIST_SYMBOL], ntdll.start + found[LOCK_SYMBOL])
    _walk(process, located.list_head)
    return located


def _walk(process: Process, head: int) -> list[int]:
    """The entries of the list at `head`, each link checked both ways; RefusedError if it is no list."""
    entries, node = [], head
    for _ in range(MAX_ENTRIES):
        try:
            next_node, _ = LINKS.unpack(process.read(node, LINKS.size))
            _, back = LINKS.unpack(process.read(next_node, LINKS.size))
        except TargetError:
            raise _refuse(f"Wine's list of dynamic function tables at {head:#x} is unreadable") from None
        if back != node:
            raise _refuse(f"Wine's list of dynamic function tables at {head:#x} is not a consistent list")
        if next_node == head:
            return entries
        entries.append(next_node)
        node = next_node
    raise _refuse(f"Wine's list of dynamic function tables at {head:#x} does not end")


def entry_bytes(base: int, table: int, functions: list[tuple[int, int, int]]) -> bytes:
    """An unlinked entry (its links are written by `link_entry`) followed by its table: the
    RUNTIME_FUNCTIONs `functions` (begin, end, unwind; offsets from `base`, sorted by begin), which the
    entry expects at `table`, right after it."""
    end = base + (functions[-1][1] if functions else 0)
    head = ENTRY.pack(0, 0, base, end, table, len(functions), 0, 0, 0)
    return head + b"".join(RUNTIME_FUNCTION.pack(*f) for f in functions)


def _require_free_lock(process: Process, located: WineUnwindRegistration) -> None:
    """The lock is free while every thread is stopped: no thread is inside a list operation."""
    lock = process.read(located.lock, CRITICAL_SECTION.size)
    _, count, recursion, owner, _, _ = CRITICAL_SECTION.unpack(lock)
    if count != -1 or recursion or owner:
        raise RefusedError(
            f"{REASON}: a thread of process {process.pid} holds Wine's function-table lock (thread id"
            f" {owner:#x}); nothing changed, retry"
        )


def link_entry(stopped: StoppedThreads, registration: WineUnwindRegistration) -> None:
    """Append the entry at the list's tail (as list_add_tail), every thread stopped; undone on failure."""
    process = stopped.process
    _require_free_lock(process, registration)
    _walk(process, registration.list_head)
    head, entry = registration.list_head, registration.entry
    _, tail = LINKS.unpack(process.read(head, LINKS.size))
    process.write(entry, LINKS.pack(head, tail))  # the package's own page: nothing else reads it yet
    stopped.write(tail, struct.pack("<Q", entry))  # tail->next
    stopped.write(head + 8, struct.pack("<Q", entry))  # head->prev


def unlink_entry(stopped: StoppedThreads, registration: WineUnwindRegistration) -> None:
    """Take the entry out of the list (as list_remove), every thread stopped; a no-op if it is not in it."""
    process = stopped.process
    _require_free_lock(process, registration)
    if registration.entry not in _walk(process, registration.list_head):
        return
    next_node, previous = LINKS.unpack(process.read(registration.entry, LINKS.size))
    stopped.write(previous, struct.pack("<Q", next_node))  # prev->next
    stopped.write(next_node + 8, struct.pack("<Q", previous))  # next->prev
