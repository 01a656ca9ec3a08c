"""Take packages out of a running process (`hpkg revert --pid PID`); the mirror of loader/apply.py.

  STEP 1  find   the hpkg records in the process (all, or the image stack of `--package ID`)
  STEP 2  prove  every patch site holds the record's jump or its pre-image (a site changed by someone
                 else is refused, naming the function: hpkg does not overwrite what it did not write)
  STEP 3  place  nothing to place: the record already says what to restore
  STEP 4  wait   stop every thread at a moment none is inside (or returns into) the package's code
  STEP 5  switch write every site's pre-image back, check the result, resume
  STEP 6  tidy   free the package memory (or, under Wine, keep what a word still points into: below)

Rule for levels: revert goes back to the baseline. Every level applied to the image (the top level
and any superseded one whose memory a killed loader left behind) is reverted and freed together; a
lower level is not re-instated — apply it again if that is what is wanted. An interrupted apply
(record "prepared", maybe some sites switched) is reverted the same way. Allocations that carry no
record (a loader killed before writing one; nothing can reach them) are freed by a revert of all.

Rule for memory a word points into (a Windows program under Wine): the stop searches every register
and every stack word of every thread, each Windows stack from its Windows rsp to its StackBase, for
pointers into the package memory. A Windows stack's live frames keep stale words (a package string's
old address in main's line buffer) that waiting does not clear, and a word may as well be live (a
function pointer, a buffer a waiting frame holds). So such a word does not refuse the revert: the sites
get their pre-images back, the record is marked RETIRED in the same stop, and that package's memory
stays mapped with its code and data as they were (its Wine function table stays linked, so a call
through the word still unwinds); only its record pages become inaccessible, the mark by which the
maps show it retired. Memory no word points into is freed as before. A later revert of the same image
searches the image's retired memory too, and frees what no word, saved pc or thread's pc points into
any more (its function table unlinked in that stop). An ELF process keeps the stricter rule: a word
into the memory makes the moment unsafe (retried, then refused).

Rule for records: revert writes only what an authenticated record says (loader/record.py), and only at
sites that are function entries of the image's file (loader/bounds.py). A record that fails its seal or
validation refuses the whole revert before anything is written (exit 4); a record of an older hpkg
(unsealed) is reverted only with `allow_unauthenticated`, and not when it registered unwind rules
(the address of ld.so's record it names cannot be checked).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpkg.errors import HpkgError, IncompatibleTarget, RefusedError, TargetError
from hpkg.loader.alloc import Allocation
from hpkg.loader.bounds import check_record_sites, image_code_of_process
from hpkg.loader.interrupts import deferred_interrupts
from hpkg.loader.live import (
    DEFAULT_TIMEOUT,
    free_allocations,
    kept_mapped,
    open_process,
    retire_allocations,
    target_lock,
    wait_until_safe,
)
from hpkg.loader.pe_process import pe_image_code_of_process, pe_images
from hpkg.loader.process import Process
from hpkg.loader.procfs import RuntimeImage, list_images
from hpkg.loader.record import (
    STATE_OFFSET,
    FoundRecord,
    PatchRecord,
    RecordSeal,
    RecordState,
    RecordTrust,
    SiteRecord,
    find_records,
    sealed_state,
    usable_records,
)
from hpkg.loader.safety import CodeRange, PointerWord
from hpkg.loader.switch import PreparedSwitch, SiteWrite, prepare_switch, switch_table
from hpkg.loader.terminal import printable
from hpkg.loader.wine_unwind import find_wine_unwind_list, unlink_entry


@dataclass(frozen=True)
class Retained:
    """A reverted package whose memory stays mapped, retired: the first word found pointing into it."""

    package_id: str
    allocation: Allocation
    word: PointerWord

    def line(self) -> str:
        owner = f"package {printable(self.package_id)}"
        return f"  kept mapped: {kept_mapped(self.word, owner, self.allocation)}"

    def to_json(self) -> dict[str, object]:
        w = self.word
        return {"package_id": self.package_id, "start": self.allocation.start, "size": self.allocation.size,
                "tid": w.tid, "where": w.where, "word": w.word, "at": w.at}  # fmt: skip


@dataclass(frozen=True)
class ImageReverted:
    """One image of the process back at its baseline bytes."""

    image_path: str
    build_id: str
    packages: tuple[tuple[str, int], ...]  # (package id, level) of every record reverted
    restored: tuple[SiteRecord, ...]
    pause_seconds: float
    switch: str  # how the sites were written: one system call, or site by site
    attempts: int = 1  # stops made to find a safe moment (a busy function makes more)
    stopped_seconds: float = 0.0  # threads stopped over every attempt, this switch's pause included
    window: tuple[tuple[str, float], ...] = ()  # the pause's steps and their seconds (the bench's breakdown)
    retained: tuple[Retained, ...] = ()  # packages whose memory a word still points into: kept mapped
    released: tuple[tuple[str, Allocation], ...] = ()  # the image's retired memory no word points into: freed


@dataclass(frozen=True)
class LiveRevertResult:
    """What `revert --pid` did. Nothing to revert (no package, or not the one named) is a success with
    nothing changed, so that repeating a revert is harmless; `package_id` is the one asked for, if any."""

    pid: int
    images: tuple[ImageReverted, ...]
    freed_orphans: tuple[Allocation, ...]
    package_id: str | None = None

    @property
    def changed(self) -> bool:
        """Whether anything was taken out (a package reverted or orphan memory freed)."""
        return bool(self.images or self.freed_orphans)

    @property
    def pause_ms(self) -> float:
        return max((i.pause_seconds for i in self.images), default=0.0) * 1000

    @property
    def nothing_applied(self) -> str:
        """Why nothing was reverted, in one line ("" when something was)."""
        if self.changed:
            return ""
        if self.package_id is not None:
            return f"package {printable(self.package_id)} is not applied in process {self.pid}"
        return f"process {self.pid} carries no hpkg package"

    def lines(self) -> list[str]:
        if not self.changed:
            return [f"nothing to revert: {self.nothing_applied}"]
        out = []
        for image in self.images:
            ids = ", ".join(f"{printable(pid)} (level {level})" for pid, level in image.packages)
            out.append(f"reverted {ids} in process {self.pid}")
            out.append(f"  image {printable(image.image_path)} (build-id {image.build_id})")
            for site in image.restored:
                out.append(f"    {printable(site.function)}: pre-image restored at {site.address:#x}")
            out.append(f"  switch: {image.switch}")
            out.append(f"  pause: {image.pause_seconds * 1000:.3f} ms (all threads stopped)")
            out += [kept.line() for kept in image.retained]
            for retired_id, memory in image.released:
                where = f"at {memory.start:#x} ({memory.size // 1024} KiB)"
                out.append(f"  freed the retired memory of package {printable(retired_id)} {where}:"
                           " no word points into it any more")  # fmt: skip
            if image.attempts > 1:
                tries = f"{image.attempts} attempts to find a safe moment"
                out.append(f"  {tries}: {image.stopped_seconds * 1000:.3f} ms stopped in all")
        for orphan in self.freed_orphans:
            name = printable(orphan.name)
            out.append(f"freed /memfd:{name} at {orphan.start:#x} (no record: an interrupted apply)")
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "changed": self.changed,
            "pause_ms": round(self.pause_ms, 3),
            "images": [
                {
                    "path": i.image_path,
                    "build_id": i.build_id,
                    "packages": [{"package_id": p, "patch_level": level} for p, level in i.packages],
                    "restored": [{"function": s.function, "address": s.address} for s in i.restored],
                    "pause_ms": round(i.pause_seconds * 1000, 3),
                    "attempts": i.attempts,
                    "stopped_ms": round(i.stopped_seconds * 1000, 3),
                    "switch": i.switch,
                    "retained": [kept.to_json() for kept in i.retained],
                    "freed_retired": [
                        {"package_id": p, "start": a.start, "size": a.size} for p, a in i.released
                    ],
                }
                for i in self.images
            ],
            "freed_orphans": [{"name": a.name, "start": a.start, "size": a.size} for a in self.freed_orphans],
        }


def revert_process(
    pid: int,
    package_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    allow_unauthenticated: bool = False,
) -> LiveRevertResult:
    """Revert every package in process `pid`, or the image stack holding `package_id`, to the baseline."""
    process = open_process(pid)
    with deferred_interrupts(), process, target_lock(pid, timeout):
        # STEP 1: the records (refused before anything is written unless each can be trusted), per image.
        found = usable_records(find_records(process), pid, allow_unauthenticated)
        unauthenticated = {f.record.package_id for f in found if f.trust is RecordTrust.UNAUTHENTICATED}
        stacks = _stacks(found)
        if package_id is not None:
            stacks = {k: s for k, s in stacks.items() if any(r.package_id == package_id for r in s)}
        absent = [f.allocation for f in found if f.trust is RecordTrust.ABSENT]
        if not stacks and (package_id is not None or not absent):
            return LiveRevertResult(pid, (), (), package_id)  # nothing applied: nothing to do
        # STEP 2 (first half): every record of every image proven bounded before any image is reverted.
        images = [(_check_stack(process, stack, unauthenticated), stack) for stack in stacks.values()]
        retired = _retired(process, found)  # freed beside a revert of their image, once no word is left
        done = [_revert_stack(process, stack, image, timeout, retired.get(key)) for key, (image, stack)
                in zip(stacks, images, strict=True)]  # fmt: skip
        orphans: list[Allocation] = []
        if package_id is None:
            orphans = absent
            free_allocations(process, orphans)
    return LiveRevertResult(pid, tuple(done), tuple(orphans), package_id)


def _stacks(found: list[FoundRecord]) -> dict[tuple[str, int], list[PatchRecord]]:
    """The records to revert, per image (build-id and load bias), lowest level first; a retired record is
    reverted already."""
    stacks: dict[tuple[str, int], list[PatchRecord]] = {}
    for f in found:
        if f.record is not None and not f.retired:
            stacks.setdefault((f.record.build_id, f.record.load_bias), []).append(f.record)
    for stack in stacks.values():
        stack.sort(key=lambda r: r.patch_level)
    return stacks


def _retired(process: Process, found: list[FoundRecord]) -> dict[tuple[str, int], list[PatchRecord]]:
    """The retired records per image (build-id and load bias), those whose memory a revert of that image
    may free when no word points into it any more: with no function table, or one linked into the list
    ntdll has now (the only list revert unlinks from)."""
    located: tuple[int, int] | None = None  # ntdll's list head and lock; (0, 0) when not found
    retired: dict[tuple[str, int], list[PatchRecord]] = {}
    for f in found:
        record = f.record
        if record is None or not f.retired:
            continue
        if record.wine_unwind is not None:
            if located is None:
                try:
                    table = find_wine_unwind_list(process)
                    located = (table.list_head, table.lock)
                except HpkgError:
                    located = (0, 0)
            if located != (record.wine_unwind.list_head, record.wine_unwind.lock):
                continue
        retired.setdefault((record.build_id, record.load_bias), []).append(record)
    return retired


def _sites_to_restore(process: Process, stack: list[PatchRecord]) -> list[SiteRecord]:
    """STEP 2: each site holds a jump of this stack (restore it) or its pre-image (leave it); else refuse."""
    return _sites_in(process, stack)


def _sites_in(memory: Process | PreparedSwitch, stack: list[PatchRecord]) -> list[SiteRecord]:
    """The sites to restore, judging what `memory` holds: the process now, or a switch's reading."""
    read = memory.read if isinstance(memory, Process) else memory.found
    jumps = {(s.address, s.jump) for r in stack for s in r.sites}
    restore: dict[int, SiteRecord] = {}
    reasons = []
    for record in stack:
        for site in record.sites:
            current = read(site.address, len(site.pre_image))
            if current == site.pre_image:
                continue
            size = len(site.jump)
            if (site.address, current[:size]) in jumps and current[size:] == site.pre_image[size:]:
                restore.setdefault(site.address, site)
                continue
            reasons.append(
                f"function {printable(site.function)} at {site.address:#x}: holds {current.hex()}, neither"
                f" the jump of package {printable(record.package_id)} nor its pre-image"
                f" {site.pre_image.hex()} (changed by another)"
            )
    if reasons:
        raise IncompatibleTarget("patch sites were changed after hpkg applied its package; nothing reverted",
                                 tuple(reasons))
    return sorted(restore.values(), key=lambda s: s.address)


def _unwind_restores(process: Process, stack: list[PatchRecord]) -> list[tuple[int, bytes]]:
    """The writes that give ld.so's `_dlfo_main` its startup words back, when a level of the stack
    registered unwind rules and they are still in force; a record someone else changed is refused."""
    for record in reversed(stack):
        registration = record.unwind
        if registration is None:
            continue
        words = (
            process.read(registration.map_end_address, 8), process.read(registration.eh_frame_address, 8)
        )
        applied = dict(registration.applied_words())
        original = dict(registration.original_words())
        if words == (applied[registration.map_end_address], applied[registration.eh_frame_address]):
            return registration.original_words()
        if words != (original[registration.map_end_address], original[registration.eh_frame_address]):
            raise IncompatibleTarget(
                f"ld.so's record of {record.image_path} holds neither the unwind registration of package"
                f" {record.package_id} nor the startup values (changed by another); nothing reverted"
            )
    return []


def _check_stack(process: Process, stack: list[PatchRecord], unauthenticated: set[str]) -> RuntimeImage:
    """The image a stack of records patched, once every site they name is proven a function entry of the
    image's file (revert writes nowhere else)."""
    top = stack[-1]
    key = (top.build_id, top.load_bias)
    image = next((i for i in list_images(process.pid) if (i.build_id, i.load_bias) == key), None)
    code = image_code_of_process(process.pid, image) if image is not None else None
    if image is None:  # a Windows program under Wine: its PE image, by identity and base
        image = next((i for i in pe_images(process) if (i.build_id, i.load_bias) == key), None)
        code = pe_image_code_of_process(process.pid, image) if image is not None else None
    if image is None or code is None:
        raise TargetError(f"image {printable(top.image_path)} is no longer mapped in process {process.pid}")
    for record in stack:
        what = f"the record of package {printable(record.package_id)}"
        names_unwinder = record.unwind is not None or record.wine_unwind is not None
        if record.package_id in unauthenticated and names_unwinder:
            raise RefusedError(f"{what} is unauthenticated and names an unwinder's record; nothing written")
        if record.wine_unwind is not None:  # it writes only into the list ntdll has now
            located = find_wine_unwind_list(process)
            if (located.list_head, located.lock) != (record.wine_unwind.list_head, record.wine_unwind.lock):
                raise RefusedError(f"{what} names a function-table list ntdll does not have; nothing written")
        sites = [(s.function, image.link_address(s.address), len(s.pre_image)) for s in record.sites]
        check_record_sites(sites, code, what)
    return image


def _revert_stack(
    process: Process, stack: list[PatchRecord], image: RuntimeImage, timeout: float,
    retired: list[PatchRecord] | None = None,
) -> ImageReverted:
    top = stack[-1]
    restore = _sites_to_restore(process, stack)
    # STEP 4: no thread inside the package's code, nor at a patch site.
    new_code = [CodeRange(f"{c.function} (package {r.package_id[:12]})", c.start, c.end)
                for r in stack for c in r.code]
    # The whole code area too (import stubs sit after the functions), and any pointer into the memory.
    new_code += [CodeRange(f"code of package {r.package_id[:12]}", *r.area("code")) for r in stack]
    freed = [CodeRange(f"memory of package {r.package_id[:12]}", r.allocation.start, r.allocation.end)
             for r in stack]
    # The image's retired memory too, freed once no word (nor a thread's pc) points into it any more (a
    # Wine process: an ELF process never retires memory, and would take such a word as unsafe).
    retired = [] if image.elf_type or retired is None else retired
    freed += [CodeRange(f"retired memory of package {r.package_id[:12]}", r.allocation.start,
                        r.allocation.end) for r in retired]  # fmt: skip
    windows = [CodeRange(s.function, s.address, s.address + len(s.pre_image)) for s in restore]
    # Everything the switch needs, while the process runs: every site of the stack as it is now (what
    # STEP 2 found), the pre-images to write, the method; each record's header marked retired, sealed,
    # in case a word under Wine keeps its memory mapped.
    writes = [SiteWrite(s.address, s.pre_image) for s in restore]
    checked = [(s.address, len(s.pre_image)) for r in stack for s in r.sites]
    switch = prepare_switch(process, writes, checked, switch_table(top), image)
    if _sites_in(switch, stack) != restore:
        raise IncompatibleTarget("patch sites changed while hpkg prepared the revert; none reverted")
    # Nothing to write in the window but the sites (no unwind or Wine table to unlink, no retired memory
    # of Wine's to look at): the window's one-call check makes the switch itself when every thread passes.
    alone = all(r.unwind is None and r.wine_unwind is None for r in stack + retired)
    fused = switch.fused(process) if alone else None
    seal = RecordSeal.of(process)
    retired_header = {r.allocation.start: sealed_state(r, RecordState.RETIRED, seal) for r in stack}
    pointed: list[PointerWord] = []
    with wait_until_safe(process, new_code, windows, image, timeout, freed, fused, pointed) as stopped:
        # The words found pointing into package memory (Wine only): that memory stays, its record retired.
        kept = _kept(stack + retired, pointed)
        # STEP 5 (the threads are stopped): ld.so's record first, so the unwinder stops looking in the
        # package before its code goes away; then the sites, still holding what was read before the
        # stop, get their pre-images back, checked; then a kept package's record is marked retired.
        # An exception undoes it all.
        for address, word in _unwind_restores(process, stack):
            stopped.write(address, word)
        for record in stack + retired:  # Wine's unwinder stops looking in the tables of the memory freed
            if record.wine_unwind is not None and record.allocation.start not in kept:
                unlink_entry(stopped, record.wine_unwind)
        method = switch.run(stopped, "patch sites changed while hpkg waited for a safe moment; none reverted")
        for start in kept.keys() & retired_header.keys():  # retired memory kept is marked so already
            stopped.write(start + STATE_OFFSET, retired_header[start])
        stopped.mark("switch")
    pause = stopped.pause
    # STEP 6: nothing jumps into the package memory any more, and no thread was inside it: what no word
    # points into is freed, the rest keeps its code and data and loses access to its record pages.
    free_allocations(process, [r.allocation for r in stack + retired if r.allocation.start not in kept])
    retire_allocations(process, [(r.allocation, r.area("record")[1]) for r in stack
                                 if r.allocation.start in kept])  # fmt: skip
    packages = tuple((r.package_id, r.patch_level) for r in stack)
    retained = tuple(Retained(r.package_id, r.allocation, kept[r.allocation.start])
                     for r in stack if r.allocation.start in kept)  # fmt: skip
    released = tuple((r.package_id, r.allocation) for r in retired if r.allocation.start not in kept)
    return ImageReverted(top.image_path, top.build_id, packages, tuple(restore), pause, method,
                         stopped.attempts, stopped.stopped_before + pause, stopped.window_steps(), retained,
                         released)  # fmt: skip


def _kept(stack: list[PatchRecord], pointed: list[PointerWord]) -> dict[int, PointerWord]:
    """Allocation start → the first word found pointing into it, for each record's memory a word points
    into (registers first, then stacks, as found)."""
    kept: dict[int, PointerWord] = {}
    for word in pointed:
        for record in stack:
            if word.memory.start == record.allocation.start:
                kept.setdefault(record.allocation.start, word)
    return kept
