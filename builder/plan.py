"""PatchPlan: from a DiffResult to everything a package holds, with the hotpatchability verdict.

Pure: a DiffResult and options in, a frozen PatchPlan out; nothing is read or written. The stages,
in the manner of kpatch's main():

  spurious_changes     reference-only "changes" that resolve to the baseline's own targets: left out
  select_functions     changed + added functions, their split pieces, mid-body entries
  *_reasons            data, TLS, constructors, IFUNC resolvers, unwinding, patch sites (all at once)
  Relocator            each reference → baseline location, package location or import
  lay_out              code (16-aligned), rodata, data, bss; NEW addresses → section offsets
  _finish              relocation records, fields zeroed, the plan

`check_plan(plan)` then raises UnsupportedChange (every blocking reason) or NoChange.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from hpkg.builder.layout import SectionLayout, lay_out
from hpkg.builder.model import (
    ChangeKind,
    DataChangeKind,
    DiffResult,
    Function,
    FunctionPair,
    Image,
    Status,
    SymbolKind,
    TargetKind,
)
from hpkg.builder.relocate import SECTION_OF_SPACE, Fixup, Place, Relocator
from hpkg.builder.resolve import is_read_only
from hpkg.builder.select import select_functions
from hpkg.builder.sites import JUMP_SIZE, PatchSite, patch_site
from hpkg.builder.unwind import UnwindSection, emit_unwind, exception_frames
from hpkg.builder.verdict import Reason, Verdict, check_allowed, require_patchable
from hpkg.elf.constants import STT_GNU_IFUNC
from hpkg.elf.structs import SYM
from hpkg.formats.model import (
    FIELD_WIDTH,
    DataSection,
    ImportRecord,
    PackageSection,
    Relocation,
    TargetSpace,
)

__all__ = [
    "PatchPlan",
    "PatchSite",
    "PlanOptions",
    "PlannedFunction",
    "PlannedObject",
    "check_plan",
    "plan_patch",
]

@dataclass(frozen=True)
class PlanOptions:
    """What the release engineer chose: patch level, the package it supersedes, overrides, line-only fixes."""

    level: int = 1
    supersedes: str | None = None
    allow: tuple[str, ...] = ()
    include_line_only: bool = False


@dataclass(frozen=True)
class PlannedFunction:
    """A function in the package's code: replaced (it has a patch site in the baseline) or added."""

    name: str
    new_address: int
    code_offset: int
    code_size: int
    why: str  # "changed", "added", "piece of foo", "entered mid-body from foo", …
    site: PatchSite | None  # None for an added function
    baseline_size: int = 0  # the OLD function's size (0 when added)


@dataclass(frozen=True)
class PlannedObject:
    """A named object the package carries: a new variable (data, bss) or a changed constant (rodata)."""

    name: str
    section: DataSection
    offset: int
    size: int
    new_address: int


@dataclass(frozen=True)
class PatchPlan:
    """Everything a package holds, laid out and relocated, plus the verdict on whether it may exist."""

    mode: str
    options: PlanOptions
    functions: tuple[PlannedFunction, ...]
    objects: tuple[PlannedObject, ...]
    imports: tuple[ImportRecord, ...]
    code: bytes
    rodata: bytes
    data: bytes
    bss_size: int
    relocations: tuple[Relocation, ...]
    verdict: Verdict
    left_out: tuple[str, ...]  # line-number-only changes not included
    rodata_shared: int = 0  # references to read-only data pointed at OLD's identical copy
    jump_tables: int = 0
    warnings: tuple[str, ...] = ()  # facts the release engineer should know; they do not refuse
    unwind: bytes = b""  # CIEs, FDEs and LSDAs of the package functions (relocations are in `relocations`)

    @property
    def replaced(self) -> tuple[PlannedFunction, ...]:
        return tuple(f for f in self.functions if f.site is not None)

    @property
    def added(self) -> tuple[PlannedFunction, ...]:
        return tuple(f for f in self.functions if f.site is None)

    @property
    def has_content(self) -> bool:
        return bool(self.functions)


# -- reasons that do not depend on relocation ---------------------------------------------------------
def ifunc_resolvers(image: Image) -> set[int]:
    """Addresses of IFUNC resolvers: STT_GNU_IFUNC symbols (read raw, the model folds them into functions)
    and the resolvers of IRELATIVE relocations."""
    found = {r.addend for r in image.dynamic_relocations if r.type == "X86_64_IRELATIVE"}
    for name in (".symtab", ".dynsym"):
        table = image.section_bytes.get(name, b"")
        for offset in range(0, len(table) - SYM.size + 1, SYM.size):
            info = table[offset + 4]
            if info & 0xF == STT_GNU_IFUNC:
                found.add(struct.unpack_from("<Q", table, offset + 8)[0])
    return found


def _tls_layout(image: Image) -> tuple:
    """The PT_TLS block's (file size, memory size): the static TLS a running process already has."""
    return tuple((s.file_size, s.memory_size) for s in image.segments if s.kind == "TLS")


def data_reasons(diff: DiffResult) -> list[Reason]:
    """Variables present in both builds that changed (live state), and any change of thread-local storage."""
    reasons: list[Reason] = []
    if _tls_layout(diff.old) != _tls_layout(diff.new):
        reasons.append(Reason("tls-changed", "TLS", "the thread-local storage block changed size"))
    seen: set[tuple[str, str]] = set()
    for change in diff.data_changes:
        sym = change.old or change.new
        assert sym is not None
        name = sym.name.split("@")[0]
        image = diff.old if change.old is not None else diff.new
        section = image.section(sym.section)
        tls = sym.kind is SymbolKind.TLS or (section is not None and section.tls)
        if tls and change.change is not DataChangeKind.VALUE:
            reason = Reason("tls-changed", name, f"thread-local '{name}' was {change.change.value}")
        elif change.change is DataChangeKind.SIZE and not is_read_only(image, sym):
            old_size = change.old.size if change.old else 0
            new_size = change.new.size if change.new else 0
            reason = Reason(
                "data-size-changed", name,
                f"variable '{name}' changed size from {old_size} to {new_size} bytes:"
                " live data has the old layout",
            )
        elif change.change is DataChangeKind.VALUE and not is_read_only(image, sym):
            reason = Reason(
                "data-value-changed", name,
                f"variable '{name}' changed its initial value (or its layout at the same size); running"
                " processes keep the value they hold",
            )
        else:
            continue
        if (reason.code, name) not in seen:
            seen.add((reason.code, name))
            reasons.append(reason)
    return reasons


def function_reasons(diff: DiffResult, pairs: tuple[FunctionPair, ...]) -> list[Reason]:
    """Constructors, destructors, init/fini arrays and IFUNC resolvers among the changed functions."""
    reasons: list[Reason] = []
    old_init = set(diff.old.init_functions)
    resolvers = ifunc_resolvers(diff.old)
    for pair in pairs:
        if pair.old is None or pair.status is Status.SAME:
            continue
        address = pair.old.function.address
        if address in old_init:
            message = f"constructor or destructor '{pair.name}' changed; it already ran"
            reasons.append(Reason("init-changed", pair.name, message))
        if address in resolvers:
            reasons.append(Reason("ifunc-changed", pair.name, f"IFUNC resolver '{pair.name}' changed"))
    twin = {p.old.function.address: p.new.function.address for p in diff.pairs if p.old and p.new}
    mapped = sorted(twin.get(a, -1) for a in diff.old.init_functions)
    if mapped != sorted(diff.new.init_functions):
        names = {p.new.function.address: p.name for p in diff.pairs if p.new}
        added = sorted(names.get(a, hex(a)) for a in set(diff.new.init_functions) - set(mapped))
        new_init = set(diff.new.init_functions)
        removed = sorted(hex(a) for a in diff.old.init_functions if twin.get(a) not in new_init)
        detail = ", ".join([f"added {n}" for n in added] + [f"removed {n}" for n in removed]) or "reordered"
        message = f"the constructors or destructors changed: {detail}"
        reasons.append(Reason("init-array-changed", "init_array", message))
    return reasons


def spurious_changes(diff: DiffResult) -> frozenset[int]:
    """NEW addresses of functions the diff calls changed in their references only, whose every reference
    nevertheless resolves to the very target the baseline's does (a moved PLT entry, a moved string
    of the same bytes): they already behave as the fix, and replacing them would only add risk."""
    probe = Relocator(diff, {}, True)
    found = set()
    for pair in diff.changed:
        if pair.change_kind is not ChangeKind.REFERENCES or pair.old is None or pair.new is None:
            continue
        old_refs, new_refs = pair.old.references, pair.new.references
        if pair.old.masked != pair.new.masked or len(old_refs) != len(new_refs):
            continue
        start = pair.new.function.address
        if all(probe.same_as_baseline(a, b, start) for a, b in zip(old_refs, new_refs, strict=True)):
            found.add(pair.new.function.address)
    return frozenset(found)


def unwind_reasons(
    diff: DiffResult, pairs: tuple[FunctionPair, ...], frames: set[int], unwind: UnwindSection
) -> list[Reason]:
    """Package functions an exception may pass through whose unwind rules the package cannot carry."""
    if not frames:
        return []
    reasons = []
    for pair in pairs:
        fn = pair.new.function
        calls = any(r.target.kind in (TargetKind.FUNCTION, TargetKind.IMPORT) for r in pair.new.references)
        if (fn.address in frames or calls) and fn.address not in unwind.covered:
            why = unwind.problems.get(fn.address, "the fix has no FDE for it")
            reasons.append(
                Reason(
                    "unwind-info-missing", pair.name,
                    f"function '{pair.name}' can be unwound through by an exception (C++ throw, cleanups),"
                    f" and its unwind rules cannot be carried ({why}): such an exception would terminate"
                    " the process",
                )
            )
    return reasons


def _sites(diff: DiffResult, pairs: tuple[FunctionPair, ...]) -> tuple[dict[int, PatchSite], list[Reason]]:
    """Patch sites of the replaced functions (keyed by NEW address), or a reason for each too-small one."""
    starts = sorted(
        {p.old.function.address for p in diff.pairs if p.old}
        | {s.end for s in diff.old.sections if s.executable}
    )
    sites: dict[int, PatchSite] = {}
    reasons: list[Reason] = []
    for pair in pairs:
        if pair.old is None:
            continue
        fn = pair.old.function
        following = bisect.bisect_right(starts, fn.address)
        site = patch_site(diff.old, fn, starts[following] if following < len(starts) else fn.end)
        if site is None:
            reasons.append(
                Reason(
                    "function-too-small", pair.name,
                    f"function '{pair.name}' is {fn.size} bytes, shorter than the {JUMP_SIZE}-byte jump,"
                    " and no padding follows it",
                )
            )
            continue
        sites[pair.new.function.address] = site
    return sites, reasons


# -- the plan ---------------------------------------------------------------------------------------
def plan_patch(diff: DiffResult, options: PlanOptions | None = None) -> PatchPlan:
    """Lay out and relocate the package for a diff, and judge it; the plan says, it does not raise."""
    options = options or PlanOptions()
    allowed = check_allowed(options.allow)
    spurious = spurious_changes(diff)
    selection = select_functions(diff, options.include_line_only, spurious)
    reasons = data_reasons(diff) + function_reasons(diff, selection.pairs)
    sites, site_reasons = _sites(diff, selection.pairs)
    reasons += site_reasons

    functions = {p.new.function.address: p.new.function for p in selection.pairs}
    code = lay_out([(f.address, f.end) for f in functions.values()], _reader(functions), False, merge=False)
    tls_unchanged = not any(r.code == "tls-changed" for r in reasons)
    relocator = Relocator(diff, functions, tls_unchanged)
    for pair in selection.pairs:
        relocator.resolve_function(pair.new.function, pair.new.references, pair.name)
    relocator.scan_copied_data()
    reasons += relocator.reasons

    image = diff.new
    rodata = lay_out(relocator.ranges.get(TargetSpace.RODATA, []), image.read, True)
    data = lay_out(relocator.ranges.get(TargetSpace.DATA, []), image.read, True)
    bss = lay_out(relocator.ranges.get(TargetSpace.BSS, []), None, True)
    layouts = {
        TargetSpace.CODE: code, TargetSpace.RODATA: rodata, TargetSpace.DATA: data, TargetSpace.BSS: bss
    }
    relocations, sections, layout_reasons = _finish(relocator, layouts)
    reasons += layout_reasons
    # Unwind rules only for images that take part in exception handling (a personality routine), where
    # an exception passing through package code without them would terminate the process.
    frames = exception_frames(image)
    unwind = UnwindSection(b"", (), frozenset(), {})
    if frames:
        spans = tuple((f.address, f.size) for f in functions.values())
        unwind = emit_unwind(image, diff.old, spans, code.offset_of, relocator.import_index)
    reasons += unwind_reasons(diff, selection.pairs, frames, unwind)
    relocations += unwind.relocations
    for fn, location, target in relocator.short_jumps:
        field, goal = code.offset_of(fn.address + location), code.offset_of(target)
        if field is None or goal is None or goal - field != target - (fn.address + location):
            reasons.append(
                Reason(
                    "reference-unresolved", fn.name,
                    f"function '{fn.name}' at +{location:#x}: a short jump to {target:#x}"
                    " that the layout cannot keep",
                )
            )

    planned = tuple(
        PlannedFunction(
            name=pair.name if pair.old is None else pair.old.function.name,
            new_address=pair.new.function.address,
            code_offset=code.offset_of(pair.new.function.address) or 0,
            code_size=pair.new.function.size,
            why=why,
            site=sites.get(pair.new.function.address),
            baseline_size=pair.old.function.size if pair.old else 0,
        )
        for pair, why in zip(selection.pairs, selection.why, strict=True)
        if pair.old is None or pair.new.function.address in sites
    )
    objects = tuple(
        PlannedObject(
            o.name.split("@")[0],
            o.section,
            layouts[_space(o.section)].offset_of(o.address) or 0,
            o.size,
            o.address,
        )
        for o in sorted(relocator.objects.values(), key=lambda o: o.address)
    )
    return PatchPlan(
        mode=diff.mode,
        options=options,
        functions=planned,
        objects=objects,
        imports=tuple(relocator.imports),
        code=sections[PackageSection.CODE],
        rodata=sections[PackageSection.RODATA],
        data=sections[PackageSection.DATA],
        bss_size=bss.size,
        relocations=relocations,
        verdict=Verdict(tuple(reasons), allowed),
        left_out=selection.left_out,
        rodata_shared=relocator.rodata_shared,
        jump_tables=relocator.jump_tables,
        warnings=_warnings(planned),
        unwind=unwind.content,
    )


# Functions a running process is inside for its whole life: replacing one only helps a file patch.
ALWAYS_ACTIVE = frozenset({"main"})


def _warnings(functions: tuple[PlannedFunction, ...]) -> tuple[str, ...]:
    return tuple(
        f"'{f.name}' is replaced, and a running process is always inside it: a live apply will wait for"
        " it in vain (the loader refuses); the package still serves `hpkg apply --file`"
        for f in functions
        if f.site is not None and f.name in ALWAYS_ACTIVE
    )


def _space(section: DataSection) -> TargetSpace:
    return {DataSection.RODATA: TargetSpace.RODATA, DataSection.DATA: TargetSpace.DATA}.get(
        section, TargetSpace.BSS
    )


def _reader(functions: dict[int, Function]):
    """Bytes of the fix's package functions by NEW address (their own copy, as the diff read them)."""

    def read(address: int, size: int) -> bytes:
        return functions[address].code[:size]

    return read


_FIELD_SECTION_SPACE = {section: space for space, section in SECTION_OF_SPACE.items()}


def _target_of(place: Place, layouts: dict[TargetSpace, SectionLayout]) -> int | None:
    if place.space in (TargetSpace.BASELINE, TargetSpace.IMPORT):
        return place.value
    return layouts[place.space].offset_of(place.value)


def _finish(
    relocator: Relocator, layouts: dict[TargetSpace, SectionLayout]
) -> tuple[tuple[Relocation, ...], dict[PackageSection, bytes], list[Reason]]:
    """Relocation records with section offsets, and the section bytes with every relocated field zeroed."""
    content = {
        section: bytearray(layouts[space].content) for section, space in _FIELD_SECTION_SPACE.items()
    }
    code_layout = layouts[TargetSpace.CODE]
    for address, byte in relocator.code_edits.items():
        offset = code_layout.offset_of(address)
        if offset is not None:
            content[PackageSection.CODE][offset] = byte
    records: dict[tuple[PackageSection, int], Relocation] = {}
    reasons: list[Reason] = []
    fixup: Fixup
    for fixup in relocator.fixups:
        offset = layouts[_FIELD_SECTION_SPACE[fixup.section]].offset_of(fixup.field_address)
        target = _target_of(fixup.place, layouts)
        if offset is None or target is None:
            reasons.append(
                Reason(
                    "reference-unresolved", hex(fixup.field_address),
                    f"field at {fixup.field_address:#x} or its target did not get a place in the package",
                )
            )
            continue
        width = FIELD_WIDTH[fixup.kind]
        content[fixup.section][offset : offset + width] = bytes(width)
        records[(fixup.section, offset)] = Relocation(
            fixup.section, offset, fixup.kind, fixup.place.space, target, fixup.addend
        )
    relocations = tuple(records[key] for key in sorted(records))
    return relocations, {section: bytes(b) for section, b in content.items()}, reasons


def check_plan(plan: PatchPlan) -> PatchPlan:
    """The plan when it may become a package; else UnsupportedChange (every reason) or NoChange."""
    require_patchable(plan.verdict, plan.has_content, plan.left_out)
    return plan
