"""The diff driver: two images in, a DiffResult out; one call per stage, like kpatch's main()."""

from __future__ import annotations

import os
from collections import ChainMap
from collections.abc import Callable
from itertools import chain

from hpkg.builder.canon import canonicalize_images, cycle_collector_paused
from hpkg.builder.compare import EntryMemo, compare_pair
from hpkg.builder.data import diff_data
from hpkg.builder.data_twins import pair_data_objects
from hpkg.builder.datamap import anonymous_twins, correspond_section_data
from hpkg.builder.heap import ResidentPages, release_freed_memory
from hpkg.builder.image import load_image
from hpkg.builder.match import AddressIndex, match_functions
from hpkg.builder.model import CanonicalFunction, DiffResult, Function, FunctionPair, Image, Status
from hpkg.errors import ImageError

MODE_RELOCATIONS = "relocations"
MODE_DISASSEMBLY = "disassembly"

Progress = Callable[[int], None]


def choose_mode(old: Image, new: Image) -> str:
    """Relocation mode only when both builds kept their static relocations (-Wl,--emit-relocs)."""
    return MODE_RELOCATIONS if old.has_static_relocations and new.has_static_relocations else MODE_DISASSEMBLY


def pair_functions(
    old: tuple[CanonicalFunction, ...],
    new: tuple[CanonicalFunction, ...],
    how: dict[int, str],
    function_twins: dict[int, int],
    old_image: Image,
    new_image: Image,
    data_map: dict[int, int] | None = None,
) -> tuple[FunctionPair, ...]:
    """Give every function a pair: twin and status, and for changed ones the change kind (`how`: how
    the match made each pair, by baseline address).

    `data_map` ties anonymous data addresses of the two builds (see datamap); function starts and
    data addresses never coincide, so one mapping serves both.
    """
    # One view of both mappings (a function's twin wins), not a merged copy of a dict per function.
    function_map = ChainMap(function_twins, data_map) if data_map else function_twins
    new_by_address = AddressIndex(new)  # two columns, not a dict of every function
    pairs: list[FunctionPair] = []
    memo = EntryMemo()  # see references_correspond
    # File pages made resident since the last hand-back: changed pairs are decoded again, and the
    # line proof and the reference finder read data too (libxul: 10,000 pairs, 120 MiB of pages).
    resident = ResidentPages((old_image, new_image))
    for c in old:
        twin_address = function_twins.get(c.function.address)
        if twin_address is None:
            pairs.append(FunctionPair(c, None, Status.REMOVED))
            continue
        twin = new_by_address[twin_address]
        kind = compare_pair(c, twin, function_map, old_image, new_image, memo)
        checked = kind is not None or len(pairs) % 256 == 0  # same pairs read data too (the line proof)
        if checked:
            resident.check()
        status = Status.SAME if kind is None else Status.CHANGED
        pairs.append(FunctionPair(c, twin, status, kind, how[c.function.address]))
    # Fix functions that are some baseline function's twin or stand at a mapped data address: marks
    # by position, not a set of 180,000 addresses at the stage's peak.
    taken = bytearray(len(new))
    for address in chain(function_twins.values(), data_map.values() if data_map else ()):
        for i in new_by_address.positions(address):
            taken[new_by_address.rows[i]] = 1
    pairs.extend(FunctionPair(None, c, Status.NEW) for c, done in zip(new, taken, strict=True) if not done)
    return tuple(pairs)


@cycle_collector_paused()
def diff_images(
    old: Image,
    new: Image,
    parallel: bool | None = None,
    progress: Progress | None = None,
    functions: tuple[tuple[Function, ...], tuple[Function, ...]] | None = None,
) -> DiffResult:
    """Compare baseline and fix function by function and object by object.

    `parallel`: decode the two images in two processes (None: when they are big enough to pay).
    `functions`: both images' `discover_functions`, when the caller already has them (`hpkg build`).
    """
    if old.kind != new.kind:
        # A library and an executable (or a PIE and a fixed-address build) are not two builds of one
        # program: their layouts, entry and init code differ wholesale and no patch maps one on the other.
        raise ImageError(
            f"the baseline {old.path} ({old.kind}) and the fix {new.path} ({new.kind})"
            " are not two builds of one program"
        )
    mode = choose_mode(old, new)
    use_relocations = mode == MODE_RELOCATIONS
    # Functions (bounds from symbols and .eh_frame; the images' symbol tables are not used after this
    # except to resolve reference targets) and their canonical forms: references found (relocations
    # or decoding) and masked. Functions not given are found where they are canonicalized.
    old_functions, new_functions = functions or (None, None)
    old_canonical, new_canonical = canonicalize_images(
        old, old_functions, new, new_functions, use_relocations, parallel, progress
    )
    release_freed_memory()  # each stage's scratch, before the next stage's peak
    # Correlate functions; from here on nothing matches functions again (the twins are on the result).
    function_twins, how = match_functions(old_canonical, new_canonical, old, new)
    release_freed_memory()
    # Compare each pair, anonymous data tied by the functions that use it; what unchanged functions
    # then prove about anonymous data is the only tie kept.
    data_map = correspond_section_data(old_canonical, new_canonical, function_twins, old, new)
    pairs = pair_functions(old_canonical, new_canonical, how, function_twins, old, new, data_map)
    anonymous_data = anonymous_twins(pairs)
    # Neither how each pair was made nor the anonymous-data map is read again (libwebkit2gtk: a
    # 10 MiB dict and more), and the data stages below make the diff's peak.
    del how, data_map
    old.release_pages()  # the code of changed pairs, decoded again to compare them
    new.release_pages()
    release_freed_memory()
    # Data objects: paired once by symbol, then compared; the canonical forms are not used after this.
    data_twins = pair_data_objects(old, new, old_canonical, new_canonical, function_twins)
    data_changes = diff_data(old, new, old_canonical, new_canonical, function_twins, data_twins)
    old.release_pages()
    new.release_pages()
    release_freed_memory()  # the data stages' scratch, before the caller's report is written
    return DiffResult(old, new, mode, pairs, data_changes, function_twins, data_twins, anonymous_data)


def diff_files(
    old_path: str | os.PathLike[str],
    new_path: str | os.PathLike[str],
    old_debug: str | os.PathLike[str] | None = None,
    new_debug: str | os.PathLike[str] | None = None,
    parallel: bool | None = None,
    progress: Progress | None = None,
) -> DiffResult:
    """Load two binaries (and optional separate debug files) and diff them."""
    return diff_images(load_image(old_path, old_debug), load_image(new_path, new_debug), parallel, progress)

