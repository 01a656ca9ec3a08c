"""Apply a package to a running process (`hpkg apply PKG --pid PID`); loader/revert.py mirrors it.

  STEP 1  find   the images whose build-id is the package's baseline, and the hpkg records already there
  STEP 2  prove  the compatibility check against the running image (pre-images, or a superseded level)
  STEP 3  place  allocate near the image, relocate, write the record, code and data, set protections —
                 all while the process runs, nothing reaches the new memory yet
  STEP 4  wait   stop every thread at a moment none is inside (or returns into) replaced code
  STEP 5  switch re-check the sites, write every jump (and restore the sites a superseded level no
                 longer patches) in one system call, mark the record applied, check, resume
  STEP 6  tidy   free the superseded level's memory

Any failure before STEP 5 completes leaves the process as it was: journaled writes undone, the
allocation freed, threads resumed and detached.

Switch robustness. The record (every site's pre-image and jump) is in the target before any site is
written, and every thread is seized with PTRACE_SEIZE, so a loader killed at any moment leaves a
running process and a record. The sites themselves are written by one injected process_vm_writev
(loader/switch.py): a loader killed mid-switch leaves all sites switched or none, never a mix. What a
death can still leave: the code pages around the sites writable (rwx) if it falls between the two
mprotect calls around that write; a record still saying "prepared" if it falls between the write
and the 4-byte state flip (`hpkg status` shows each site's real state, `hpkg revert` undoes it); an
allocation with no record if it falls inside STEP 3 (`hpkg revert` frees it). Where the one-call
path is impossible (sites in several mappings, seccomp, a W^X policy) the switch falls back to one
/proc/PID/mem write per site and says so in its output: then, for those microseconds, a mix is
possible, visible in `hpkg status` and undone by `hpkg revert`.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass

from hpkg.arch.x86_64 import JMP_REL32_SIZE
from hpkg.elf.ehframe import EH_FRAME_HDR, EH_FRAME_HDR_ENTRY, UnwindTableError, count_fdes
from hpkg.errors import IncompatibleTarget, RefusedError, TargetError
from hpkg.formats.model import Package
from hpkg.loader import alloc
from hpkg.loader.alloc import Allocation
from hpkg.loader.bounds import ImageCode, check_record_sites, check_writes, image_code_of_process
from hpkg.loader.compat import AppliedLevel, CompatReport, carried_detail, check_compatibility, contains
from hpkg.loader.inject import PROT_EXEC, PROT_READ, PROT_WRITE, Injector
from hpkg.loader.interrupts import deferred_interrupts, raise_if_interrupted
from hpkg.loader.link import RelocatedImage, SiteJump, relocate
from hpkg.loader.live import (
    DEFAULT_TIMEOUT,
    ProcessImageReader,
    baseline_images,
    free_allocations,
    kept_mapped,
    open_process,
    replaced_ranges,
    retire_allocations,
    target_lock,
    wait_until_safe,
)
from hpkg.loader.live_imports import ProcessImports
from hpkg.loader.live_unwind import REASON, UnwindTarget, check_placement, find_unwind_target
from hpkg.loader.pe_live_imports import PeProcessImports
from hpkg.loader.pe_process import pe_baseline_images, pe_image_code_of_process
from hpkg.loader.placement import AreaLayout, ImportResolver, Placement, area_layout
from hpkg.loader.process import Process, StoppedThreads
from hpkg.loader.procfs import PAGE_SIZE, RuntimeImage, page_up
from hpkg.loader.record import (
    STATE_OFFSET,
    CodeRecord,
    FoundRecord,
    PatchRecord,
    RecordSeal,
    RecordState,
    SiteRecord,
    UnwindRegistration,
    WineUnwindRegistration,
    encode,
    encoded_size,
    find_records,
    sealed_state,
    usable_records,
)
from hpkg.loader.safety import CodeRange, PointerWord
from hpkg.loader.switch import PreparedSwitch, SiteWrite, StateWrite, prepare_switch, switch_table
from hpkg.loader.terminal import printable
from hpkg.loader.unwind_table import merged_eh_frame_hdr, package_fdes
from hpkg.loader.wine_unwind import (
    ENTRY_SIZE,
    WineUnwindList,
    entry_bytes,
    find_wine_unwind_list,
    link_entry,
    unlink_entry,
)
from hpkg.pe.package_unwind import decode_package_pdata

RACED = "a patch site changed while hpkg prepared the package; nothing applied"


@dataclass(frozen=True)
class ImageApplied:
    """One image of the process switched to the package."""

    image: RuntimeImage
    compat: CompatReport
    record: PatchRecord
    pause_seconds: float
    superseded: str | None
    warnings: tuple[str, ...]
    switch: str  # how the sites were written: one system call, or site by site
    attempts: int = 1  # stops made to find a safe moment (a busy function makes more)
    stopped_seconds: float = 0.0  # threads stopped over every attempt, this switch's pause included
    window: tuple[tuple[str, float], ...] = ()  # the pause's steps and their seconds (the bench's breakdown)
    superseded_retained: bool = False  # the superseded level's memory kept, retired (a warning says why)


@dataclass(frozen=True)
class ImageCarrying:
    """A baseline image that already carries the package, or a higher level for the same baseline
    (levels are cumulative: a higher one contains every fix of the lower ones): nothing to do there."""

    image: RuntimeImage
    package_id: str  # the applied record's package
    patch_level: int

    def detail(self, package: Package) -> str:
        """"" when the image carries `package` itself, else which higher level (containing it) it carries."""
        return carried_detail(package, self.package_id, self.patch_level)


@dataclass(frozen=True)
class LiveApplyResult:
    """What `apply --pid` did, for the CLI's human and JSON output.

    `images` were switched now; `carrying` already had the package (or a higher level): an apply that
    finds everything in place succeeds with nothing changed, so that repeating it is harmless.
    """

    package: Package
    pid: int
    images: tuple[ImageApplied, ...]
    carrying: tuple[ImageCarrying, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether this apply switched anything (False: every baseline image already carried it)."""
        return bool(self.images)

    @property
    def pause_ms(self) -> float:
        """The longest time the process was held stopped for a switch, in milliseconds."""
        return max((i.pause_seconds for i in self.images), default=0.0) * 1000

    def lines(self) -> list[str]:
        identity = self.package.identity
        out = []
        for carrying in self.carrying:
            path = printable(carrying.image.path)
            detail = printable(carrying.detail(self.package))
            head = f"already applied: {identity.package_id} in process {self.pid} ({path})"
            out.append(f"{head}: {detail}" if detail else head)
        if not self.images:
            return out
        out.append(f"applied {identity.package_id} (level {identity.patch_level}) to process {self.pid}")
        for applied in self.images:
            r = applied.record
            path = printable(applied.image.path)
            out.append(f"  image {path} (build-id {r.build_id}, load bias {r.load_bias:#x})")
            memory = f"{r.allocation.start:#x}-{r.allocation.end:#x}"
            out.append(f"  package memory {memory} (/memfd:{printable(r.allocation.name)})")
            for site in r.sites:
                jump = f"jmp at {site.address:#x} -> {site.replacement:#x}"
                out.append(f"    {printable(site.function)}: {jump}")
            if applied.superseded:
                kept = applied.superseded_retained
                fate = "kept mapped, retired: a word points into it" if kept else "freed"
                out.append(f"  superseded package {printable(applied.superseded)} (its memory {fate})")
            out.append(f"  switch: {applied.switch}")
            out.append(f"  pause: {applied.pause_seconds * 1000:.3f} ms (all threads stopped)")
            if applied.attempts > 1:
                stopped = applied.stopped_seconds * 1000
                tries = f"{applied.attempts} attempts to find a safe moment"
                out.append(f"  {tries}: {stopped:.3f} ms stopped in all")
        return out

    def to_json(self) -> dict[str, object]:
        identity = self.package.identity
        return {
            "pid": self.pid,
            "package_id": identity.package_id,
            "patch_level": identity.patch_level,
            "changed": self.changed,
            "pause_ms": round(self.pause_ms, 3),
            "images": [
                {
                    "path": a.image.path,
                    "build_id": a.record.build_id,
                    "load_bias": a.record.load_bias,
                    "allocation": {"name": a.record.allocation.name, "start": a.record.allocation.start,
                                   "size": a.record.allocation.size},
                    "patch_sites": [
                        {"function": s.function, "address": s.address, "replacement": s.replacement}
                        for s in a.record.sites
                    ],
                    "superseded": a.superseded,
                    "pause_ms": round(a.pause_seconds * 1000, 3),
                    "attempts": a.attempts,
                    "stopped_ms": round(a.stopped_seconds * 1000, 3),
                    "switch": a.switch,
                    "warnings": list(a.warnings),
                    "compatibility": a.compat.to_json(),
                }
                for a in self.images
            ],
            "already_applied": [
                {"path": c.image.path, "build_id": c.image.build_id, "package_id": c.package_id,
                 "patch_level": c.patch_level}
                for c in self.carrying
            ],
        }


@dataclass(frozen=True)
class Prepared:
    """The package placed in the target, not yet reachable: allocation, relocated bytes and record."""

    allocation: Allocation
    relocated: RelocatedImage
    record: PatchRecord


def apply_to_process(package: Package, pid: int, timeout: float = DEFAULT_TIMEOUT) -> LiveApplyResult:
    """Apply `package` to every baseline image of process `pid`; refuse (nothing changed) when unsafe.

    An image that already carries the package (or a higher level for its baseline), every site still
    holding that record's jump, is left alone and reported: applying twice is not an error.
    """
    process = open_process(pid)
    with deferred_interrupts(), process, target_lock(pid, timeout):
        # STEP 1: the baseline images, and what hpkg already applied to them (records it can authenticate).
        # A Windows PE32+ baseline runs under Wine: its image is found by its identity (loader/pe_process).
        images = _baseline_images(process, package)
        seal = RecordSeal.of(process)
        found = usable_records(find_records(process, seal), pid)
        done, carrying = [], []
        for image in images:
            records = _records_of(found, image)
            carried = _carrying(process, package, image, records)
            if carried is not None:
                carrying.append(carried)
            else:
                done.append(_apply_to_image(process, package, image, records, timeout, seal))
    return LiveApplyResult(package, pid, tuple(done), tuple(carrying))


def _carrying(
    process: Process, package: Package, image: RuntimeImage, records: list[FoundRecord]
) -> ImageCarrying | None:
    """The applied record on `image` that makes this apply a no-op: this very package, or a higher level
    (which contains it), completely switched, every site still holding its jump. Anything else, from a
    site changed by another to an interrupted apply, is left to the compatibility check to refuse."""
    superseded = {f.record.supersedes for f in records if f.record is not None and f.record.supersedes}
    for found in records:
        record = found.record
        if record is None or found.state is not RecordState.APPLIED or record.package_id in superseded:
            continue
        if not contains(package, record.package_id, record.patch_level):
            continue
        if all(process.read(s.address, len(s.jump)) == s.jump for s in record.sites):
            return ImageCarrying(image, record.package_id, record.patch_level)
    return None


@dataclass(frozen=True)
class ImageVerified:
    """One baseline image of a process proven compatible with a package (apply's STEPS 1-2 alone), or
    found already carrying it (apply would change nothing there: `carrying` set, `compat` None)."""

    image: RuntimeImage
    compat: CompatReport | None
    carrying: ImageCarrying | None = None

    def lines(self, package: Package) -> list[str]:
        """The compatibility lines, or why there is nothing to apply."""
        if self.carrying is not None:
            detail = self.carrying.detail(package)
            return [f"already applied{f': {printable(detail)}' if detail else ''} (apply changes nothing)"]
        return self.compat.lines() if self.compat is not None else []


def check_process(package: Package, pid: int) -> list[ImageVerified]:
    """The compatibility check against every baseline image of process `pid`; stops and changes nothing."""
    process = open_process(pid)
    with process:
        images = _baseline_images(process, package)
        found = usable_records(find_records(process), pid)
        verified = []
        for image in images:
            records = _records_of(found, image)
            carried = _carrying(process, package, image, records)
            if carried is not None:
                verified.append(ImageVerified(image, None, carried))
                continue
            reader = ProcessImageReader(process, image)
            code = _image_code(process, package, image)
            compat = check_compatibility(package, reader, _applied_levels(records), code)
            if package.unwind and package.target.is_pe:  # Wine's list must be found, as apply would
                find_wine_unwind_list(process)
            elif package.unwind:  # the unwind rules must be registrable too (refused here as apply would)
                registered = _registered(records, _superseded(records, compat), package)
                current = (registered.map_end, registered.eh_frame) if registered is not None else None
                find_unwind_target(process, image, current)
            verified.append(ImageVerified(image, compat))
        return verified


def _baseline_images(process: Process, package: Package) -> list[RuntimeImage]:
    """The package's baseline images: by build-id (ELF), or by identity among a Wine process's PE images."""
    return pe_baseline_images(process, package) if package.target.is_pe else baseline_images(process, package)


def _image_code(process: Process, package: Package, image: RuntimeImage) -> ImageCode:
    """The function entries of the image, from the file it was mapped from (ELF or PE, as the package's)."""
    if package.target.is_pe:
        return pe_image_code_of_process(process.pid, image)
    return image_code_of_process(process.pid, image)


def _applied_levels(records: list[FoundRecord]) -> list[AppliedLevel]:
    return [
        AppliedLevel(f.record.package_id, f.record.patch_level, ((f.allocation.start, f.allocation.end),))
        for f in records if f.record is not None
    ]


def _superseded(records: list[FoundRecord], compat: CompatReport) -> PatchRecord | None:
    """The record of the level this package supersedes, when one is applied."""
    return next((f.record for f in records if f.record and f.record.package_id == compat.superseded), None)


def _records_of(found: list[FoundRecord], image: RuntimeImage) -> list[FoundRecord]:
    """The records of packages on `image`, a retired one left out: reverted, applied nowhere (its memory
    only kept mapped for a word that points into it, loader/revert.py)."""
    key = (image.build_id, image.load_bias)
    return [
        f for f in found
        if f.record is not None and not f.retired and (f.record.build_id, f.record.load_bias) == key
    ]  # fmt: skip


def _apply_to_image(
    process: Process,
    package: Package,
    image: RuntimeImage,
    records: list[FoundRecord],
    timeout: float,
    seal: RecordSeal,
) -> ImageApplied:
    interrupted = [f.record.package_id for f in records if f.state is not RecordState.APPLIED and f.record]
    if interrupted:
        raise RefusedError(
            f"an earlier apply of package {interrupted[0]} to {image.path} was interrupted; "
            f"run `hpkg status --pid {process.pid}` and `hpkg revert --pid {process.pid}` first"
        )
    # STEP 2: prove the running image is the baseline (or carries the level this package supersedes).
    # Every site is a function entry of the image, as its file says (loader/bounds.py).
    code = _image_code(process, package, image)
    compat = check_compatibility(package, ProcessImageReader(process, image), _applied_levels(records), code)
    old = _superseded(records, compat)
    if old is not None:  # the superseded level's pre-images go back at its sites: entries of the image too
        check_record_sites(
            ((s.function, image.link_address(s.address), len(s.pre_image)) for s in old.sites), code,
            f"the record of package {old.package_id}",
        )

    # Unwind rules: proven registrable (or refused) before anything changes. A Windows package's go into
    # Wine's list of dynamic function tables (loader/wine_unwind.py), an ELF package's into ld.so's record.
    wine_list = find_wine_unwind_list(process) if package.target.is_pe and package.unwind else None
    if old is not None and old.wine_unwind is not None:
        _same_wine_list(find_wine_unwind_list(process), old.wine_unwind)
    registered = None if package.target.is_pe else _registered(records, old, package)
    target = None
    if not package.target.is_pe and (package.unwind or registered is not None):
        current = (registered.map_end, registered.eh_frame) if registered is not None else None
        target = find_unwind_target(process, image, current)

    # STEP 3: place the package while the process runs. Ctrl-C is taken here or while waiting for a
    # safe moment (the allocation is then freed), never after the switch.
    raise_if_interrupted()
    prepared = _prepare(process, package, image, seal, target if package.unwind else None, old, wine_list)
    try:
        # STEP 4: a safe moment — no thread in a replaced function, nor in the superseded level's code.
        functions, windows = replaced_ranges(package, image)
        freed: list[CodeRange] = []
        if old is not None:
            level = old.patch_level
            functions += [CodeRange(f"{c.function} (level {level})", c.start, c.end) for c in old.code]
            windows += [CodeRange(s.function, s.address, s.address + len(s.pre_image)) for s in old.sites]
            freed.append(CodeRange(f"memory of level {level}", old.allocation.start, old.allocation.end))
        # Everything the switch needs, while the process runs: the sites as they are now (still what
        # STEP 2 proved), the bytes to write, the method, the record's state flip.
        switch = prepare_switch(
            process,
            _site_writes(prepared.relocated, old),
            [(s.address, len(s.pre_image)) for s in prepared.relocated.patch_sites],
            switch_table(prepared.record),
            image,
        )
        _recheck_sites(switch, prepared.relocated, old)
        state_at = prepared.allocation.start + STATE_OFFSET
        applied = sealed_state(prepared.record, RecordState.APPLIED, seal)
        prepared_state = process.read(state_at, len(applied))
        state = StateWrite(state_at, applied, prepared_state)
        # Nothing to write in the window but the switch (no level superseded, no unwind or Wine table to
        # link): the window's one-call check makes the switch itself when every thread passes.
        alone = old is None and registered is None and prepared.record.unwind is None
        fused = switch.fused(process, state) if alone and prepared.record.wine_unwind is None else None
        # Under Wine, a word pointing into the superseded level's memory keeps it mapped, retired.
        retired = sealed_state(old, RecordState.RETIRED, seal) if old is not None else b""
        pointed: list[PointerWord] = []
        with wait_until_safe(process, functions, windows, image, timeout, freed, fused, pointed) as stopped:
            # STEP 5 (the threads are stopped): the sites still hold what was read before the stop, then
            # every jump, checked, then the record marked applied. An exception undoes it all.
            kept = pointed[0] if pointed else None
            if old is not None:
                _carry_over(process, stopped, old, prepared.record)
                if old.wine_unwind is not None and kept is None:  # the superseded level's table leaves
                    unlink_entry(stopped, old.wine_unwind)  # Wine's list (a kept one stays, for the word)
            if prepared.record.wine_unwind is not None:  # Wine's unwinder finds the package's functions first
                link_entry(stopped, prepared.record.wine_unwind)
            # The unwinder finds the package's FDEs before any jump leads there (or, when a lower level
            # registered some and this one has none, ld.so's record gets its startup words back).
            if prepared.record.unwind is not None:
                own = ((old.allocation.start, old.allocation.end),) if old is not None else ()
                allocation = prepared.allocation
                check_placement(process.maps(), image, allocation.start, allocation.end, own)
                for address, word in prepared.record.unwind.applied_words():
                    stopped.write(address, word)
            elif registered is not None:
                for address, word in registered.original_words():
                    stopped.write(address, word)
            # The sites, then the record marked applied (one helper call on the one-page path).
            method = switch.run(stopped, RACED, state)
            if old is not None and kept is not None:
                stopped.write(old.allocation.start + STATE_OFFSET, retired)
            stopped.mark("switch")
        pause = stopped.pause
    except BaseException:
        with contextlib.suppress(TargetError):
            free_allocations(process, [prepared.allocation])
        raise

    # STEP 6: the superseded level is unreachable now (no site jumps into it, no thread was inside it).
    warnings: list[str] = []
    if old is not None and kept is not None:
        warnings.append(kept_mapped(kept, f"superseded package {old.package_id}", old.allocation))
        try:
            retire_allocations(process, [(old.allocation, old.area("record")[1])])
        except TargetError as exc:
            warnings.append(f"could not mark the kept memory of superseded package {old.package_id}: {exc}")
    elif old is not None:
        try:
            free_allocations(process, [old.allocation])
        except TargetError as exc:
            warnings.append(f"could not free the memory of superseded package {old.package_id}: {exc}")
    superseded = old.package_id if old else None
    return ImageApplied(image, compat, prepared.record, pause, superseded, tuple(warnings), method,
                        stopped.attempts, stopped.stopped_before + pause, stopped.window_steps(),
                        old is not None and kept is not None)


def _registered(
    records: list[FoundRecord], old: PatchRecord | None, package: Package
) -> UnwindRegistration | None:
    """The unwind registration this apply replaces: the superseded level's. Another package's, when this
    one has unwind rules too, is a refusal (one table would not list the other's FDEs)."""
    for found in records if package.unwind else ():
        record = found.record
        if record is not None and record.unwind is not None and (old is None or record is not old):
            raise RefusedError(
                f"{REASON}: package {record.package_id} registered unwind rules for this image and this"
                " package does not supersede it; revert it first"
            )
    return old.unwind if old is not None else None


def _same_wine_list(located: WineUnwindList, registered: WineUnwindRegistration) -> None:
    """A record's Wine registration names the list ntdll has now; else it is not trusted to write there."""
    if (located.list_head, located.lock) != (registered.list_head, registered.lock):
        raise RefusedError(
            f"{REASON}: a record names Wine's function-table list at {registered.list_head:#x}, ntdll's is at"
            f" {located.list_head:#x}; nothing changed"
        )


def _site_writes(relocated: RelocatedImage, old: PatchRecord | None) -> list[SiteWrite]:
    """Every jump, and the pre-image back at each site of the superseded level this one no longer patches."""
    writes = [SiteWrite(s.address, s.jump) for s in relocated.patch_sites]
    new_addresses = {s.address for s in relocated.patch_sites}
    for site in old.sites if old is not None else ():
        if site.address not in new_addresses:  # levels are cumulative: no longer patched
            writes.append(SiteWrite(site.address, site.pre_image))
    return writes


def _recheck_sites(switch: PreparedSwitch, relocated: RelocatedImage, old: PatchRecord | None) -> None:
    """Each site holds its pre-image, or the superseded level's jump, as the compatibility check found."""
    old_jumps = {s.address: s.jump for s in old.sites} if old is not None else {}
    for site in relocated.patch_sites:
        found = switch.found(site.address, len(site.pre_image))
        expected = old_jumps.get(site.address, b"") + site.pre_image[len(old_jumps.get(site.address, b"")):]
        if found not in (site.pre_image, expected):
            raise IncompatibleTarget(
                f"patch site {site.name} at {site.address:#x} changed while hpkg prepared the package",
                (f"function {site.name}: holds {found.hex()}, expected {site.pre_image.hex()}",),
            )


def _carry_over(process: Process, stopped: StoppedThreads, old: PatchRecord, new: PatchRecord) -> None:
    """Copy the superseded level's new variables into this level's, by name and size, while stopped.

    Levels are cumulative, so a variable the lower level added is added again here; its live value
    (a counter, a table) moves over instead of restarting from its initial value. A value that points
    into the lower level's memory would dangle: the builder's data checks are the guard against that.
    """
    previous = {(o.function, o.end - o.start): o for o in old.objects}
    for o in new.objects:
        match = previous.get((o.function, o.end - o.start))
        if match is not None and o.end > o.start:
            stopped.write(o.start, process.read(match.start, match.end - match.start))


def _record_for(
    package: Package,
    image: RuntimeImage,
    allocation: Allocation,
    relocated: RelocatedImage,
    record_size: int,
    unwind: UnwindRegistration | None = None,
    index: tuple[int, int] | None = None,
    wine_unwind: WineUnwindRegistration | None = None,
    wine_entry: tuple[int, int] | None = None,
) -> PatchRecord:
    """The record of this placement (any placement gives the same encoded size)."""
    p, layout = relocated.placement, relocated.placement.layout
    code = [
        CodeRecord(f.name, p.code + f.code_offset, p.code + f.code_offset + f.code_size)
        for f in (*package.functions, *package.added_functions)
    ]
    area_base = {"rodata": p.rodata, "data": p.data, "bss": p.bss}
    starts = [(o, area_base[o.section.value] + o.offset) for o in package.data_objects]
    objects = tuple(CodeRecord(o.name, start, start + o.size) for o, start in starts)
    return PatchRecord(
        package_id=package.identity.package_id,
        patch_level=package.identity.patch_level,
        supersedes=package.identity.supersedes,
        build_id=image.build_id,
        image_path=image.path,
        load_bias=image.load_bias,
        allocation=allocation,
        areas=(
            ("record", allocation.start, allocation.start + record_size),
            ("code", p.code, p.code + layout.code_size),
            ("rodata", p.rodata, p.read_only_end),
            ("data", p.data, p.end),
            *((("unwind-index", *index),) if index is not None else ()),
            *((("unwind-entry", *wine_entry),) if wine_entry is not None else ()),
        ),
        sites=tuple(
            SiteRecord(s.name, s.address, s.pre_image, s.jump, s.replacement) for s in relocated.patch_sites
        ),
        code=tuple(code),
        objects=objects,
        unwind=unwind,
        wine_unwind=wine_unwind,
    )


def _prepare(
    process: Process,
    package: Package,
    image: RuntimeImage,
    seal: RecordSeal,
    unwind: UnwindTarget | None = None,
    old: PatchRecord | None = None,
    wine_list: WineUnwindList | None = None,
) -> Prepared:
    """Allocate near the image, relocate, write record, code and data, set protections; free on failure.

    With `unwind` (a package with unwind rules), the allocation lies above the image and ends with a
    merged .eh_frame_hdr, which the switch registers in ld.so's record. With `wine_list` (a Windows
    package with RUNTIME_FUNCTIONs), it ends with a read-write page holding the entry and table the
    switch links into Wine's list.
    """
    resolver: ImportResolver = PeProcessImports(process, image) if package.target.is_pe else ProcessImports(
        process, image
    )
    layout = area_layout(package, resolver)
    functions = decode_package_pdata(package.unwind, len(package.code)) if wine_list is not None else ()
    # The record's size does not depend on addresses: measure it on a dry placement at 0.
    dry_unwind = UnwindRegistration(0, 0, 0, 0, 0) if unwind is not None else None
    dry_index = (0, 0) if unwind is not None else None
    dry_wine = (WineUnwindRegistration(0, 0, 0), (0, 0)) if wine_list is not None else (None, None)
    sizing = _record_for(
        package, image, Allocation(0, 0, ""), _dry_relocation(package, layout), 0, dry_unwind, dry_index,
        *dry_wine,
    )
    # The record, then room for the switch table (loader/switch.py) on the record's read-only pages.
    record_pages = page_up(encoded_size(sizing)) + PAGE_SIZE
    size = page_up(Placement.contiguous(record_pages, layout).end)
    index_offset, index_size = size, 0
    if unwind is not None:  # the merged search table, on read-only pages of its own at the end
        entries = len(unwind.baseline.table) + count_fdes(package.unwind)
        index_size = EH_FRAME_HDR.size + EH_FRAME_HDR_ENTRY.size * entries
        size += page_up(index_size)
    entry_offset, entry_size = size, 0
    if wine_list is not None:  # Wine's list entry and its RUNTIME_FUNCTIONs, on a read-write page at the end
        entry_size = len(entry_bytes(0, 0, [(0, 0, 0)] * len(functions)))
        size += page_up(entry_size)
    # Unique per attempt: an allocation a killed loader left behind must never merge with this one
    # (/proc/PID/maps is grouped by name to find allocations).
    name = f"hpkg-{package.identity.package_id}-{image.start:x}-{secrets.token_hex(3)}"
    with process.stop_thread() as held, Injector(held) as injector:
        allocation = alloc.allocate_near(injector, image, size, name, above=unwind is not None)
        try:
            placement = Placement.contiguous(allocation.start + record_pages, layout)
            relocated = relocate(package, placement, image.load_bias, resolver)
            registration, index, table = None, None, b""
            if unwind is not None:
                own = ((old.allocation.start, old.allocation.end),) if old is not None else ()
                check_placement(process.maps(), image, allocation.start, allocation.end, own)
                index = (allocation.start + index_offset, allocation.start + index_offset + index_size)
                table = _search_table(unwind, relocated, index[0])
                registration = UnwindRegistration(
                    unwind.record_address, unwind.original_end, unwind.original_eh_frame,
                    map_end=allocation.end, eh_frame=index[0],
                )
            wine, wine_entry, entry_blob = None, None, b""
            if wine_list is not None:
                wine_entry = (allocation.start + entry_offset, allocation.start + entry_offset + entry_size)
                wine = wine_list.registration(wine_entry[0])
                entry_blob = _wine_entry(allocation, placement, functions, wine_entry[0])
            record = _record_for(package, image, allocation, relocated, record_pages, registration, index,
                                 wine, wine_entry)
            writes = [
                (allocation.start, encode(record, RecordState.PREPARED, seal)),
                (placement.code, relocated.code),
                (placement.rodata, relocated.rodata),
                (placement.unwind, relocated.unwind),
                (placement.data, relocated.data),
                *([(index[0], table)] if index is not None else []),
                *([(wine_entry[0], entry_blob)] if wine_entry is not None else []),
            ]
            # Every byte goes inside the package's own allocation (proven before the first write), the
            # record first: from here on, whatever happens, the allocation says what it is.
            bounds = [(allocation.start, allocation.end)]
            check_writes([(a, len(data)) for a, data in writes], bounds, "package memory")
            for address, data in writes:
                process.write(address, data)
            _protect(injector, allocation, record)
        except BaseException:
            with contextlib.suppress(TargetError):
                alloc.free(injector, allocation)
            raise
    return Prepared(allocation, relocated, record)


def _wine_entry(allocation: Allocation, placement: Placement, functions, entry: int) -> bytes:
    """Wine's list entry for the package's code and its RUNTIME_FUNCTIONs, relative to the allocation's
    start (a RUNTIME_FUNCTION holds 32-bit offsets from its table's base)."""
    base = allocation.start
    table = [
        (placement.code - base + f.begin, placement.code - base + f.end, placement.unwind - base + f.unwind)
        for f in functions
    ]
    return entry_bytes(base, entry + ENTRY_SIZE, table)


def _search_table(unwind: UnwindTarget, relocated: RelocatedImage, address: int) -> bytes:
    """The merged .eh_frame_hdr at `address`: the program's table plus the package's relocated FDEs."""
    placement = relocated.placement
    code = (placement.code, placement.code + placement.layout.code_size)
    try:
        extra = package_fdes(relocated.unwind, placement.unwind, code)
        return merged_eh_frame_hdr(unwind.baseline, extra, address)
    except UnwindTableError as exc:
        raise RefusedError(f"{REASON}: {exc}") from None


def _dry_relocation(package: Package, layout: AreaLayout) -> RelocatedImage:
    """Sites and code offsets for sizing the record, without resolving anything in the target."""
    placement = Placement.contiguous(0, layout)
    unset = bytes(JMP_REL32_SIZE)
    sites = tuple(SiteJump(f.name, f.baseline_address, 0, f.pre_image, unset, 0) for f in package.functions)
    return RelocatedImage(placement, b"", b"", b"", 0, sites, (), (), 0)


def _protect(injector: Injector, allocation: Allocation, record: PatchRecord) -> None:
    """Final protections: record r--, code r-x, rodata r--, data and bss rw-."""
    rw, rx = PROT_READ | PROT_WRITE, PROT_READ | PROT_EXEC
    prot = {
        "record": PROT_READ, "code": rx, "rodata": PROT_READ, "data": rw, "unwind-index": PROT_READ,
        "unwind-entry": rw,  # Wine rewrites a list entry's links when its neighbours come and go
    }
    for name, start, end in record.areas:
        start_page = start & ~(PAGE_SIZE - 1)
        length = page_up(end) - start_page
        if length > 0:
            alloc.protect(injector, allocation, start_page - allocation.start, length, prot[name])
