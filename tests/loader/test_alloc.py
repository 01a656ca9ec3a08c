"""Allocation near an image: within rel32 reach, named by memfd, protectable, freed."""

from __future__ import annotations

import pytest

from hpkg.arch import x86_64
from hpkg.loader import alloc, inject
from hpkg.loader.inject import Injector
from hpkg.loader.process import Process


def main_image(process: Process, binary):
    return next(image for image in process.images() if image.path == str(binary.path))


def assert_reaches_whole_image(allocation: alloc.Allocation, image) -> None:
    for site in (image.start, image.end - x86_64.JMP_REL32_SIZE):
        assert x86_64.rel32_reaches(site, allocation.start)
        assert x86_64.rel32_reaches(site, allocation.end - 1)
    for code in (allocation.start, allocation.end - 8):
        assert x86_64.rel32_reaches(code, image.start, 7)
        assert x86_64.rel32_reaches(code, image.end - 1, 7)


@pytest.mark.parametrize("name", ["single", "single-nopie"])
def test_allocation_lands_within_reach_and_is_named(start_target, name):
    target = start_target(name, "read")
    process = Process(target.pid)
    image = main_image(process, target.binary)
    with process.stop_thread() as stopped, Injector(stopped) as injector:
        allocation = alloc.allocate_near(injector, image, 3 * 4096 + 100, "hpkg-alloc-test")
    assert allocation.size == 4 * 4096
    assert_reaches_whole_image(allocation, image)
    mapping = next(m for m in process.maps() if m.start == allocation.start)
    assert mapping.path == "/memfd:hpkg-alloc-test (deleted)"
    assert mapping.perms == "rw-p" and mapping.end == allocation.end
    assert alloc.find_allocations(process.maps()) == [allocation]
    # Write code and data, then set final protections: code r-x, data rw-.
    process.write(allocation.start, b"\xc3" * 16)
    with process.stop_thread() as stopped, Injector(stopped) as injector:
        alloc.protect(injector, allocation, 0, 4096, inject.PROT_READ | inject.PROT_EXEC)
    perms = {m.start: m.perms for m in process.maps() if allocation.start <= m.start < allocation.end}
    assert perms[allocation.start] == "r-xp" and perms[allocation.start + 4096] == "rw-p"
    assert process.read(allocation.start, 16) == b"\xc3" * 16
    assert alloc.find_allocations(process.maps()) == [allocation]
    with process.stop_thread() as stopped, Injector(stopped) as injector:
        alloc.free(injector, allocation)
    assert alloc.find_allocations(process.maps()) == []
    target.assert_running_untraced()
    target.send("alive\n")
    target.wait_for(lambda line: line == "got alive")


def test_allocation_near_a_shared_library(start_target):
    target = start_target("threads")
    process = Process(target.pid)
    libc = next(image for image in process.images() if "libc.so" in image.path)
    with process.stop_thread() as stopped, Injector(stopped) as injector:
        allocation = alloc.allocate_near(injector, libc, 64 * 1024, "hpkg-near-libc")
        assert_reaches_whole_image(allocation, libc)
        alloc.free(injector, allocation)
    target.assert_running_untraced()


def test_candidates_skip_occupied_ranges_and_stay_in_reach(start_target):
    target = start_target("single", "loop")
    process = Process(target.pid)
    maps = process.maps()
    image = main_image(process, target.binary)
    low, high = alloc.reach_window(image.start, image.end)
    candidates = list(alloc.candidate_addresses(maps, image, 1 << 20))
    assert candidates
    for address in candidates:
        assert low <= address and address + (1 << 20) <= high
        assert not any(m.start < address + (1 << 20) and address < m.end for m in maps)
