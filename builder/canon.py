"""Canonical form per function: bytes with reference fields masked and padding dropped, plus its targets.

Two functions with equal canonical forms (and targets that correspond) behave the same, wherever
the linker placed them. Padding (every nop form, int3 fill) and `endbr64` are dropped, and
in-function targets are counted in padding-free bytes, so alignment alone never makes a change.
Decoding is the hot path: one iced-x86 scan per function (`decode.scan`) gives plain ints, no text.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import os
import pickle
import re
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hpkg.arch.x86_64 import is_padding
from hpkg.builder.decode import Scan, decode_instructions, scan
from hpkg.builder.forked import run_forked
from hpkg.builder.functions import code_size, discover_functions, functions_at, unnamed_function
from hpkg.builder.heap import ResidentPages
from hpkg.builder.model import (
    REFERENCE_COLUMNS,
    CanonicalFunction,
    FormStore,
    Function,
    FunctionStore,
    Image,
    Instruction,
    LinkAddress,
    Reference,
    Target,
    TargetColumns,
    TargetKind,
    TargetTable,
)
from hpkg.builder.references import disassembly_references, relocation_references, relocations_by_function
from hpkg.builder.symbolize import ALIASES, CODE_SUFFIX, TargetResolver
from hpkg.builder.wire import array_in, array_out, strings_in, strings_out

_NUMERIC_SUFFIX = re.compile(r"\.\d+(?=\.|$)")
# Below this many bytes of code (both images) a second process costs more than it saves.
PARALLEL_MIN_BYTES = 400_000
# From this many bytes of code (both images) on, each image is canonicalized in a child of its own
# even without a spare CPU (one after the other): the memory its scratch leaves behind outweighs
# the cost of sending the forms back.
SEPARATE_MIN_BYTES = 16 << 20


def stable_name(name: str) -> str:
    """A name without GCC's numbering (`count.1` → `count`, `f.constprop.3` → `f.constprop`)."""
    return _NUMERIC_SUFFIX.sub("", name)


def hash_key(target: tuple) -> tuple:
    """A target's key for hashing across builds: unnamed functions and numbering are left out.

    `target` is a Target or a plain tuple of its fields (kind, name, offset, address, content, entries).
    """
    kind, name, offset, _, content, entries = target
    if kind is TargetKind.INTERNAL:  # most targets: branches inside the function
        return ("i", offset)
    if kind is TargetKind.FUNCTION:
        return ("function", "sub" if name.startswith("sub_") else stable_name(name), offset)
    if kind is TargetKind.DATA:
        if content and content.startswith(ALIASES):
            return ("data", "aliased", offset)  # which name the address resolves to depends on layout
        return ("data", stable_name(name), offset, content)
    if kind is TargetKind.JUMP_TABLE:
        return ("j", entries)
    if kind is TargetKind.RODATA:
        return ("r", content, offset)
    return (kind.value, name, offset, content)


def _canonical_offset(offset: int, padding_ends: list[int], removed_before: list[int]) -> int:
    """An in-function byte offset counted without the padding in front of it."""
    i = bisect.bisect_right(padding_ends, offset)
    return offset - (removed_before[i - 1] if i else 0)


_ZEROS = {1: bytes(1), 4: bytes(4), 8: bytes(8)}


def _without_padding(buf: bytearray, padding: list[tuple[int, int]]) -> tuple[bytes, list[int], list[int]]:
    """The bytes with the padding ranges cut out, and where each range ended / bytes removed up to it."""
    padding_ends: list[int] = []
    removed_before: list[int] = []
    if not padding:
        return bytes(buf), padding_ends, removed_before
    removed = 0
    pieces: list[bytes] = []
    cursor = 0
    for start, end in padding:
        pieces.append(buf[cursor:start])
        cursor = end
        removed += end - start
        padding_ends.append(end)
        removed_before.append(removed)
    pieces.append(buf[cursor:])
    return b"".join(pieces), padding_ends, removed_before


def build_canonical(
    fn: Function,
    decoded: Scan,
    found: dict[int, list[Reference]],
    table: TargetTable,
    forms: FormStore | None = None,
) -> CanonicalFunction:
    """Mask every reference field, drop padding, and renumber in-function targets; the form is a new
    row of `forms` (the image's), or of a store of its own.

    The result's `digest` is still pending (see `finish_canonical`): the masked bytes' digest, with
    the store noting when the function's tail did not decode; the masked bytes themselves are dropped.
    """
    buf = bytearray(fn.code)
    references = _found_in_order(found)
    for ref in references:
        buf[ref.location : ref.location + ref.width] = _ZEROS.get(ref.width) or bytes(ref.width)
    masked, padding_ends, removed_before = _without_padding(buf, decoded.padding)

    target_column = array("i")
    internal, jump_table = TargetKind.INTERNAL, TargetKind.JUMP_TABLE
    canonical_offsets: dict[int, int] = {}
    for ref in references:
        target = ref.target
        if target.kind is internal:
            offset = ref.internal_offset if ref.internal_offset is not None else target.offset
            canonical = canonical_offsets.get(offset)
            if canonical is None:
                canonical = offset
                if padding_ends:
                    canonical = _canonical_offset(offset, padding_ends, removed_before)
                canonical_offsets[offset] = canonical
            tid = -1 - canonical
        else:
            if target.kind is jump_table:
                entries = tuple(_canonical_offset(o, padding_ends, removed_before) for o in target.entries)
                target = Target(target.kind, target.name, target.offset, target.address, None, entries)
            tid = table.id_of(target)
        target_column.append(tid)

    pending = hashlib.blake2b(masked, digest_size=16).digest()
    if decoded.end < fn.size:
        pending += b"u"
    if forms is None:
        forms = FormStore(table)
    return forms.add(fn, target_column, pending, decoded.count, len(masked))


def masked_form(canonical: CanonicalFunction) -> bytes:
    """The masked bytes of a canonical form, rebuilt by decoding its function again (the form keeps
    only their digest: they matter for the few pairs whose digests differ)."""
    fn = canonical.function
    buf = bytearray(fn.code)
    columns = canonical.columns
    for i in range(0, len(columns), REFERENCE_COLUMNS):
        location, width = columns[i], columns[i + 1] & 0xFF
        buf[location : location + width] = bytes(width)
    return _without_padding(buf, scan(fn).padding)[0]


def finish_canonical(resolver: TargetResolver, forms: FormStore) -> None:
    """Digest anonymous read-only data (bounded by every address the image references) and each form
    (in place, row by row: no view of a form is needed).

    A form's digest covers its masked bytes and its targets' hash keys, in order: equal digests mean
    equal masked bytes and equal keys."""
    rodata = TargetKind.RODATA
    jump_table = TargetKind.JUMP_TABLE
    table = forms.table
    targets = table.targets
    boundaries = sorted({t[3] for t in targets if t[0] is rodata or t[0] is jump_table})
    for i, t in enumerate(targets):
        if t[0] is rodata and t[4] and t[4].startswith("?"):
            content = resolver.rodata_content(t[3], int(t[4][1:]), boundaries)
            table.replace(i, Target(t[0], t[1], t[2], t[3], content))
    # One text per distinct key (every unnamed function's start is ("function", "sub", 0)): a large
    # library's table has hundreds of thousands of entries and a fraction of that many distinct keys.
    distinct: dict[str, str] = {}
    key_reprs = [distinct.setdefault(text, text) for text in map(repr, map(hash_key, targets))]
    del distinct
    internal_reprs: dict[int, str] = {}
    offsets, target_ids, digests = forms.offsets, forms.targets, forms.digests
    for index in range(len(forms)):
        parts = []
        for tid in target_ids[offsets[index] : offsets[index + 1]]:
            if tid >= 0:
                parts.append(key_reprs[tid])
            else:
                text = internal_reprs.get(tid)
                if text is None:
                    text = internal_reprs[tid] = repr(("i", -1 - tid))
                parts.append(text)
        h = hashlib.blake2b(digests[16 * index : 16 * index + 16], digest_size=16)
        h.update(f"[{', '.join(parts)}]".encode())  # the repr of the list of keys
        if forms.undecoded[index]:
            h.update(b"undecoded")
        digests[16 * index : 16 * index + 16] = h.digest()


def _found_in_order(found: dict[int, list[Reference]]) -> list[Reference]:
    """References by instruction, in the order canonical forms list them."""
    return [ref for index in sorted(found) for ref in found[index]]


def canonicalize_function(
    fn: Function,
    resolver: TargetResolver,
    relocations: list | None,
    table: TargetTable,
    forms: FormStore | None = None,
) -> CanonicalFunction:
    """Decode one function, find its references (relocations when given, else decoding) and mask them
    (the form a new row of `forms`, when given)."""
    if relocations is not None:
        decoded = scan(fn, with_starts=True)
        found = relocation_references(fn, decoded, resolver, relocations)
    else:
        decoded = scan(fn, (resolver.low, resolver.high) if resolver.non_pic else None)
        found = disassembly_references(fn, decoded, resolver)
    return build_canonical(fn, decoded, found, table, forms)


@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector: canonical forms are hundreds of thousands of small acyclic
    tuples, and every full collection would walk all of them made so far (libcrypto: the stage
    takes about half as long without it). Reference counting still frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What survived is long-lived: moved into the oldest generation without being walked
        # (freeze + unfreeze), else the next young collections would walk all of it, several times.
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def canonicalize_image(
    image: Image,
    functions: tuple[Function, ...],
    use_relocations: bool,
    progress: Callable[[int], None] | None = None,
) -> tuple[CanonicalFunction, ...]:
    """Canonical forms of all functions of one image, in the order given, then any function that
    only calls revealed (see `_uncovered_code`)."""
    with cycle_collector_paused():
        everything, forms = _canonical_forms(image, functions, use_relocations, progress)
        forms.table.finder = reference_finder(image, everything, use_relocations)
        return tuple(CanonicalFunction._at(fn, forms, _row(fn, i)) for i, fn in enumerate(everything))


def _canonical_forms(
    image: Image,
    functions: tuple[Function, ...],
    use_relocations: bool,
    progress: Callable[[int], None] | None,
) -> tuple[tuple[Function, ...], FormStore]:
    """Every function's form as a row of one store (row i: the i-th function returned), without a
    view of each: a forked child sends the rows, and views cost ~60 bytes a function."""
    resolver = TargetResolver(image, functions)
    relocations = relocations_by_function(image, functions) if use_relocations else None
    table = TargetTable()
    forms = FormStore(table)
    everything = functions
    resident = ResidentPages((image,))
    decoded = 0  # bytes of code since the last progress report
    for i, fn in enumerate(functions):
        relocs = relocations.get(fn.address, []) if relocations is not None else None
        canonicalize_function(fn, resolver, relocs, table, forms)
        decoded += fn.size
        if i % 256 == 255:
            if progress:
                progress(decoded)
            decoded = 0
            # The code decoded so far is not read again here, nor mostly the data read to name
            # targets: handed back by what is resident (reading data made pages resident too).
            resident.check()
    if progress and decoded:
        progress(decoded)
    relocations = None  # each round indexes them again, with the functions it adds
    for _ in range(_DISCOVERY_ROUNDS):
        found = _uncovered_code(table)
        if not found:
            break
        # Each round resolves with a resolver of its own (its cache knows the uncovered code as
        # such): the last one's cache goes first, or both would be held at once (tens of MiB).
        resolver = None
        resolver, everything = _add_functions(image, everything, found, use_relocations, table, forms)
    # Every reference is found: neither the index of targets by value nor the resolver's cache of
    # resolved addresses is read again (libwebkit2gtk: ~35 MiB, freed before finishing's own peak).
    table.seal()
    resolver.forget_resolved()
    finish_canonical(resolver, forms)
    image.release_pages()
    return everything, forms


def reference_finder(
    image: Image, functions: tuple[Function, ...], use_relocations: bool
) -> Callable[[Function], list[Reference]]:
    """Finds a function's references again, as `canonicalize_function` did (same order and fields:
    which instructions hold references depends on the bytes and the image's layout only); the
    resolver is made on first use, by the build or a listing, for the few functions they need."""
    made: list = []

    def find(fn: Function) -> list[Reference]:
        if not made:
            everything = tuple(sorted(functions, key=lambda f: f.address))
            resolver = TargetResolver(image, everything)
            made.extend((resolver, relocations_by_function(image, everything) if use_relocations else None))
        resolver, relocations = made
        if relocations is not None:
            decoded = scan(fn, with_starts=True)
            found = relocation_references(fn, decoded, resolver, relocations.get(fn.address, []))
        else:
            decoded = scan(fn, (resolver.low, resolver.high) if resolver.non_pic else None)
            found = disassembly_references(fn, decoded, resolver)
        return _found_in_order(found)

    return find


# How many times calls into code that no symbol or FDE covers are followed (each round can reveal more).
_DISCOVERY_ROUNDS = 4


def _is_uncovered_code(target: Target) -> bool:
    return target[0] is TargetKind.SECTION and target[1].endswith(CODE_SUFFIX)


def _uncovered_code(table: TargetTable) -> set[int]:
    """Addresses that direct branches reach in code no known function covers."""
    return {t[3] for t in table.targets if _is_uncovered_code(t)}


def _add_functions(
    image: Image,
    known: tuple[Function, ...],
    addresses: set[int],
    use_relocations: bool,
    table: TargetTable,
    forms: FormStore,
) -> tuple[TargetResolver, tuple[Function, ...]]:
    """Make functions of branch targets in uncovered code (their forms the next rows of `forms`), and
    point the branches at them."""
    extra = functions_at(image, addresses, known)
    everything = tuple(sorted(known + extra, key=lambda f: f.address))
    resolver = TargetResolver(image, everything)
    relocations = relocations_by_function(image, everything) if use_relocations else None
    # The branches of the functions known so far now go to the new ones (before those are decoded,
    # so that their own references to code still uncovered stay apart).
    for i, t in enumerate(table.targets):
        if _is_uncovered_code(t):
            fn = resolver.function_at(t[3])
            if fn is not None:
                table.replace(i, Target(TargetKind.FUNCTION, fn.name, t[3] - fn.address, t[3]))
    for fn in extra:
        relocs = relocations.get(fn.address, []) if relocations else None
        canonicalize_function(fn, resolver, relocs, table, forms)
    return resolver, known + extra


def _pack(functions: tuple[Function, ...], forms: FormStore, known: int, discovered: bool) -> tuple | None:
    """Plain values for the pipe: the table's targets as columns (kept so by the parent: a tuple
    each would cost several times more on both sides), the forms' columns (arrays, sent from their
    memory: see `wire`), the functions found by following calls by their bounds (a Function
    holds the file's mapping, which the parent has), and with `discovered` the first `known`
    functions too, found by this child (see `_pack_functions`)."""
    if not functions:
        return None
    targets = TargetColumns.of(forms.table.targets)
    columns = (
        pickle.PickleBuffer(forms.digests),
        *(array_out(c) for c in (forms.counts, forms.sizes, forms.offsets, forms.targets)),
    )
    extra = [(f.name, f.address, f.size, f.section) for f in functions[known:]]
    return targets, columns, extra, _pack_functions(functions[:known]) if discovered else None


def _pack_functions(functions: tuple[Function, ...]) -> tuple:
    """The functions `discover_functions` made in this child, as their store's columns and their
    addresses: the parent makes the views (one per function) only once both children are done."""
    store = functions[0]._store if functions else FunctionStore(b"")
    if len(store) != len(functions) or any(f._store is not store for f in functions):
        raise AssertionError("discovered functions are the rows of one store, in order")
    return (
        *(array_out(c) for c in (store.sizes, store.starts, store.sections)),
        store.section_names, bytes(store.flags), strings_out(store.names), store.parents, store.aliases,
        array_out(array("Q", (f.address for f in functions))),
    )  # fmt: skip


def _unpack_functions(image: Image, packed: tuple) -> tuple[Function, ...]:
    """The functions `_pack_functions` sent, as views of a store of this process."""
    sizes, starts, sections, section_names, flags, names, parents, aliases, addresses = packed
    columns = (array_in(sizes), array_in(starts), array_in(sections), section_names, bytearray(flags),
               strings_in(names))  # fmt: skip
    store = FunctionStore.of_columns(image.section_bytes.data, columns, parents, aliases)
    return tuple(Function._at(store, i, LinkAddress(a)) for i, a in enumerate(array_in(addresses)))


def _unpack(
    image: Image, functions: tuple[Function, ...] | None, packed: tuple | None
) -> tuple[CanonicalFunction, ...]:
    if packed is None:
        return ()
    targets, columns, extra, discovered = packed
    if functions is None:
        functions = _unpack_functions(image, discovered)
    forms = FormStore(TargetTable(targets))
    digests, *arrays = columns
    forms.digests = digests if isinstance(digests, bytearray) else bytearray(digests)
    forms.counts, forms.sizes, forms.offsets, forms.targets = map(array_in, arrays)
    forms.undecoded = bytearray(len(forms.counts))
    store = FunctionStore(image.section_bytes.data)
    found = tuple(unnamed_function(image, *bounds, store) for bounds in extra)
    everything = functions + found
    if len(everything) != len(forms):
        raise AssertionError("the child's forms and the functions differ in number")
    # A form's row number is its function's (one int object for both views, when they agree).
    return tuple(CanonicalFunction._at(fn, forms, _row(fn, i)) for i, fn in enumerate(everything))


def _row(function: Function, index: int) -> int:
    """`index`, as the function's own row-number object when they are equal (ints are objects)."""
    return function._index if function._index == index else index


def _spare_cpu() -> bool:
    """Whether a second process can run beside this one: more than one CPU, and on average one left
    idle over the last minute. Measured on the libcrypto pair with 2 CPUs (both images: ~2 s of
    canonicalizing in one process; the child adds ~1 s of CPU in copy-on-write faults and shipping
    the forms back): 2.0 s against 2.7 s at a load below 1, but 6.0 s against 3.8 s at a load of 6."""
    cpus = len(os.sched_getaffinity(0))
    return cpus > 1 and os.getloadavg()[0] < cpus - 0.5


def canonicalize_images(
    old: Image,
    old_functions: tuple[Function, ...] | None,
    new: Image,
    new_functions: tuple[Function, ...] | None,
    use_relocations: bool,
    parallel: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[tuple[CanonicalFunction, ...], tuple[CanonicalFunction, ...]]:
    """Canonical forms of both images; big pairs are canonicalized in forked children, one per image.

    `parallel`: True, both children at once; False, both images in this process; None, children
    when the pair is big enough: at once when a CPU is spare, and for a large pair (SEPARATE_MIN_BYTES)
    always one after the other. A child frees what canonicalizing allocated when it exits and
    sends back only the forms: on libwebkit2gtk (92 MB) its scratch is ~100 MiB per image that the
    heap would otherwise keep. One child per image rather than a pool of chunks: results cross the
    pipe once (on libcrypto, 11,000 functions, ~0.2 s of CPU against ~1 s of canonicalizing saved).

    Functions not given (None) are discovered here, or for a large pair in the child, which sends
    them back with the forms: a child writes to every page of the parent's functions it reads
    (reference counts), so the parent's copy of an image's functions cost the tree that image's
    functions twice (libwebkit2gtk: ~31 MiB per image) while its child ran.
    """
    if old_functions is None or new_functions is None:
        large = code_size(old) + code_size(new) >= SEPARATE_MIN_BYTES
        if parallel is None and large and old_functions is None and new_functions is None:
            return _canonicalize_in_children(old, None, new, None, use_relocations, False, progress)
        old_functions = discover_functions(old) if old_functions is None else old_functions
        new_functions = discover_functions(new) if new_functions is None else new_functions
    total = sum(f.size for f in old_functions) + sum(f.size for f in new_functions)
    # A large pair's children run one after the other even with a CPU spare: each copies the pages
    # of the parent's functions it touches (reference counts are writes), so two at once hold two
    # images' scratch and two such copies. libwebkit2gtk (92 MB): the tree peaked at 571 MiB with
    # both at once, 393 MiB one after the other, for 13 s more (18 s against 31 s).
    small = total < SEPARATE_MIN_BYTES
    concurrent = parallel if parallel is not None else small and total >= PARALLEL_MIN_BYTES and _spare_cpu()
    if not concurrent and (parallel is False or total < SEPARATE_MIN_BYTES):
        return (
            canonicalize_image(old, old_functions, use_relocations, progress),
            canonicalize_image(new, new_functions, use_relocations, progress),
        )
    pair = (old, old_functions, new, new_functions)
    return _canonicalize_in_children(*pair, use_relocations, concurrent, progress)


def _canonicalize_in_children(
    old: Image,
    old_functions: tuple[Function, ...] | None,
    new: Image,
    new_functions: tuple[Function, ...] | None,
    use_relocations: bool,
    concurrent: bool,
    progress: Callable[[int], None] | None,
) -> tuple[tuple[CanonicalFunction, ...], tuple[CanonicalFunction, ...]]:
    """Each image canonicalized in a forked child of its own (its functions discovered there when
    None), its forms (and functions) sent back."""

    Job = Callable[[Callable[[int], None]], tuple | None]

    def job(image: Image, given: tuple[Function, ...] | None) -> Job:
        def run(report: Callable[[int], None]) -> tuple | None:
            with cycle_collector_paused():
                functions = discover_functions(image) if given is None else given
                everything, forms = _canonical_forms(image, functions, use_relocations, report)
                return _pack(everything, forms, len(functions), given is None)

        return run

    # Paused in every process, also while the forms are packed, sent and unpacked.
    with cycle_collector_paused():
        packed = run_forked([job(old, old_functions), job(new, new_functions)], concurrent, progress)
        out = []
        for image, functions, forms in zip((old, new), (old_functions, new_functions), packed, strict=True):
            canonical = _unpack(image, functions, forms)
            if canonical:
                everything = tuple(c.function for c in canonical)
                canonical[0].table.finder = reference_finder(image, everything, use_relocations)
            out.append(canonical)
    return out[0], out[1]


def render_function(canonical: CanonicalFunction, names: dict[int, str] | None = None) -> list[str]:
    """The function's instructions with symbolic operands, one line each (for `hpkg diff --function`).

    `names` renames functions by start address: the fix's functions shown under their baseline
    twin's name, so that only real differences show in a diff of the two listings.
    """
    fn = canonical.function
    instructions = decode_instructions(fn)
    by_location: dict[int, Reference] = {r.location: r for r in canonical.references}
    lines = []
    for insn in instructions:
        if insn.mnemonic == "endbr64" or is_padding(insn.mnemonic):
            continue
        operands = insn.operands
        for loc in range(insn.offset, insn.offset + insn.size):
            ref = by_location.get(loc)
            if ref is not None:
                operands = _symbolic_operands(insn, ref, names or {})
                break
        lines.append(f"{insn.mnemonic} {operands}".rstrip())
    return lines


def _describe(target: Target, names: dict[int, str]) -> str:
    kind = target.kind
    if kind is TargetKind.FUNCTION:
        name = names.get(target.address - target.offset, target.name)
        return f"<{name}+{target.offset:#x}>" if target.offset else f"<{name}>"
    if kind is TargetKind.INTERNAL:
        return f"<+{target.offset}>"
    if kind is TargetKind.JUMP_TABLE:
        return f"<jump-table {list(target.entries)}>"
    if kind is TargetKind.RODATA:
        return f"<{target.name} content {target.content}>"
    if kind is TargetKind.SECTION:
        return f"<{target.name}+{target.offset:#x}>"
    suffix = f"+{target.offset:#x}" if target.offset else ""
    return f"<{target.name}{suffix}>"


def _symbolic_operands(insn: Instruction, ref: Reference, names: dict[int, str]) -> str:
    text = _describe(ref.target, names)
    operands = insn.operands
    if ref.target.kind is TargetKind.INTERNAL and operands.startswith("0x"):
        return text
    replaced = re.sub(r"rip [+-] (0x[0-9a-f]+|\d+)", text, operands)
    if replaced != operands:
        return replaced
    hexes = re.findall(r"0x[0-9a-f]+", operands)
    if hexes:
        return operands.replace(hexes[-1], text) if len(hexes) == 1 else f"{operands} ; {text}"
    return text
