"""Reasons a fix cannot be hot-patched that the diff alone shows: live data, TLS, constructors, IFUNC
resolvers, and (once the package's unwind section is known) exceptions through package code.

Each returns every offender it finds; the plan gathers them all into one verdict (verdict.py).
"""

from __future__ import annotations

import struct

from hpkg.builder.baseline_index import is_read_only
from hpkg.builder.model import (
    DataChange,
    DataChangeKind,
    DiffResult,
    FunctionPair,
    Image,
    Status,
    SymbolKind,
    TargetKind,
)
from hpkg.builder.unwind import UnwindSection
from hpkg.builder.verdict import Reason
from hpkg.elf.constants import STT_GNU_IFUNC
from hpkg.elf.structs import SYM


def ifunc_resolvers(image: Image) -> set[int]:
    """Addresses of IFUNC resolvers: STT_GNU_IFUNC symbols (read raw, the model folds them into functions)
    and the resolvers of IRELATIVE relocations."""
    found = {addend for _, addend in image.dynamic_relocations.of_type("X86_64_IRELATIVE")}
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


# mingw-w64's GCC compiles `__thread` to emulated TLS: a control object `__emutls_v.NAME` (size, align,
# index, template) in .data that `__emutls_get_address` turns into each thread's copy.
EMUTLS_CONTROL_PREFIX = "__emutls_v."


def _emulated_tls(name: str) -> bool:
    return name.startswith(EMUTLS_CONTROL_PREFIX)


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
        tls = sym.kind is SymbolKind.TLS or (section is not None and section.tls) or _emulated_tls(name)
        if change.anonymous:
            reason = _anonymous_reason(change, name)
        elif tls and change.change is not DataChangeKind.VALUE:
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


def _anonymous_reason(change: DataChange, name: str) -> Reason:
    """The reason for bytes of a variable section that no symbol names (anonymous_data.py)."""
    if change.change is DataChangeKind.VALUE:
        return Reason(
            "data-value-changed", name,
            f"the initial bytes at '{name}' changed (no symbol names the variable there); running"
            " processes keep the value they hold",
        )
    old_size = change.old.size if change.old else 0
    new_size = change.new.size if change.new else 0
    return Reason(
        "data-size-changed", name,
        f"section '{name}' changed size from {old_size} to {new_size} bytes and no symbols tell its"
        " variables apart: live data has the old layout (debug files of both builds may name them)",
    )


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
    twin = diff.function_twins
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
