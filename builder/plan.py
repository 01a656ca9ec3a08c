"""PatchPlan: from a DiffResult to everything a package holds, with the hotpatchability verdict.

Pure: a DiffResult and options in, a frozen PatchPlan out; nothing is read or written. `plan_patch`
is the table of contents, one call per stage, in the manner of kpatch's main(); the twins it needs
(functions, data objects, anonymous data) come from the diff, and nothing is matched again.

`check_plan(plan)` then raises UnsupportedChange (every blocking reason) or NoChange.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpkg.builder.baseline_index import BaselineIndex
from hpkg.builder.code_fixups import CodeFixups
from hpkg.builder.copies import CopiedPointers
from hpkg.builder.coverage import OperandCoverage
from hpkg.builder.destinations import Destinations
from hpkg.builder.fixups import FixRelocations, Fixups, PackageCode
from hpkg.builder.layout import SectionLayout, lay_out_package
from hpkg.builder.model import DiffResult, Function, FunctionPair
from hpkg.builder.pe_unwind import pdata_unwind
from hpkg.builder.reasons import data_reasons, function_reasons, unwind_reasons
from hpkg.builder.records import relocation_records, short_jump_reasons
from hpkg.builder.select import select_functions, spurious_changes
from hpkg.builder.sites import PatchSite, patch_sites
from hpkg.builder.unwind import UnwindSection, emit_unwind, exception_frames
from hpkg.builder.verdict import Verdict, check_allowed, require_patchable
from hpkg.formats.model import DataSection, ImportRecord, PackageSection, Relocation, TargetSpace

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


# -- the plan ---------------------------------------------------------------------------------------
def plan_patch(diff: DiffResult, options: PlanOptions | None = None) -> PatchPlan:
    """Lay out and relocate the package for a diff, and judge it; the plan says, it does not raise."""
    options = options or PlanOptions()
    allowed = check_allowed(options.allow)
    # Indexes, built once: the baseline counterparts (read from the diff's twins; nothing is matched
    # again) and the fix's relocations.
    relocations = FixRelocations(diff.new)
    destinations = Destinations(diff, BaselineIndex(diff), relocations)
    # Selection: the changed and added functions with their pieces; a reference-only change whose
    # references all go where the baseline's already do stays out.
    selection = select_functions(diff, options.include_line_only, spurious_changes(diff, destinations))
    # Reasons the diff alone shows (its data changes are not read after this), and the patch sites.
    reasons = data_reasons(diff) + function_reasons(diff, selection.pairs)
    sites, site_reasons = patch_sites(diff, selection.pairs)
    reasons += site_reasons
    # Fixups: every reference of package code → baseline, package or import; copies named by NEW
    # address. The selected functions' references are not read after this.
    tls_unchanged = not any(r.code == "tls-changed" for r in reasons)
    package, placement = _place(destinations, relocations, selection.pairs, tls_unchanged)
    reasons += placement.reasons
    # Layout: NEW addresses → section offsets; then the relocation records, every relocated field zeroed.
    # Access thunks (library data reached through a slot) are laid out after the functions.
    layouts = lay_out_package(package.functions | placement.thunks, placement.ranges, diff.new.read)
    code = layouts[TargetSpace.CODE]
    relocation_list, sections, record_reasons = relocation_records(placement, layouts)
    reasons += record_reasons
    # Unwind rules, for images that take part in exception handling (a personality routine): an
    # exception passing through package code without them would terminate the process.
    frames = exception_frames(diff.new)
    unwind = _unwind(diff, package, code, placement) if frames else UnwindSection(b"", (), frozenset(), {})
    reasons += unwind_reasons(diff, selection.pairs, frames, unwind)
    if diff.new.pe_headers is not None:
        # A PE image has no .eh_frame: every package function that uses the stack needs its `.pdata`
        # entry, exceptions or not (the Windows unwinder takes a function without one for a leaf).
        pdata = pdata_unwind(diff.new, diff.new.pe_headers, _named(selection.pairs), code.offset_of)
        unwind = UnwindSection(pdata.content, (), pdata.covered, {})
        reasons += pdata.reasons
    reasons += short_jump_reasons(placement, code)
    # The plan: functions with their sites, objects with their offsets.
    functions = _planned_functions(selection.pairs, selection.why, sites, code)
    return PatchPlan(
        mode=diff.mode,
        options=options,
        functions=functions,
        objects=_planned_objects(placement, layouts),
        imports=tuple(placement.imports),
        code=sections[PackageSection.CODE],
        rodata=sections[PackageSection.RODATA],
        data=sections[PackageSection.DATA],
        bss_size=layouts[TargetSpace.BSS].size,
        relocations=relocation_list + unwind.relocations,
        verdict=Verdict(tuple(reasons), allowed),
        left_out=selection.left_out,
        rodata_shared=placement.rodata_shared,
        jump_tables=placement.jump_tables,
        warnings=_warnings(functions),
        unwind=unwind.content,
    )


def _place(
    destinations: Destinations,
    relocations: FixRelocations,
    pairs: tuple[FunctionPair, ...],
    tls_unchanged: bool,
) -> tuple[PackageCode, Fixups]:
    """Fixups for every reference of the package functions, then for the pointers in the data they copy."""
    package = PackageCode({p.new.function.address: p.new.function for p in pairs})
    placement = Fixups()
    coverage = OperandCoverage(placement, relocations)
    fixups = CodeFixups(destinations, package, placement, coverage, tls_unchanged)
    for pair in pairs:
        fixups.fix_function(pair.new.function, pair.new.references, pair.name)
    CopiedPointers(destinations, package, placement, relocations).scan()
    return package, placement


def _named(pairs: tuple[FunctionPair, ...]) -> tuple[tuple[str, Function], ...]:
    return tuple((pair.name, pair.new.function) for pair in pairs)


def _unwind(
    diff: DiffResult, package: PackageCode, code: SectionLayout, placement: Fixups
) -> UnwindSection:
    """The package's unwind section: the fix's rules for the package functions."""
    spans = tuple((f.address, f.size) for f in package.functions.values())
    return emit_unwind(diff.new, diff.old, spans, code.offset_of, placement.import_index)


def _planned_functions(
    pairs: tuple[FunctionPair, ...], why: tuple[str, ...], sites: dict[int, PatchSite], code: SectionLayout
) -> tuple[PlannedFunction, ...]:
    """Replaced functions (those with a patch site) and added ones, with their offsets in the code."""
    return tuple(
        PlannedFunction(
            name=pair.name if pair.old is None else pair.old.function.name,
            new_address=pair.new.function.address,
            code_offset=code.offset_of(pair.new.function.address) or 0,
            code_size=pair.new.function.size,
            why=reason,
            site=sites.get(pair.new.function.address),
            baseline_size=pair.old.function.size if pair.old else 0,
        )
        for pair, reason in zip(pairs, why, strict=True)
        if pair.old is None or pair.new.function.address in sites
    )


def _planned_objects(
    placement: Fixups, layouts: dict[TargetSpace, SectionLayout]
) -> tuple[PlannedObject, ...]:
    """The named objects the package carries, with their offsets, by NEW address."""
    return tuple(
        PlannedObject(
            o.name.split("@")[0],
            o.section,
            layouts[_space(o.section)].offset_of(o.address) or 0,
            o.size,
            o.address,
        )
        for o in sorted(placement.objects.values(), key=lambda o: o.address)
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


def check_plan(plan: PatchPlan) -> PatchPlan:
    """The plan when it may become a package; else UnsupportedChange (every reason) or NoChange."""
    require_patchable(plan.verdict, plan.has_content, plan.left_out)
    return plan
