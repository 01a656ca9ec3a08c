"""The machine scan finds exactly the processes that map a baseline, by build-id, deleted files too."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hpkg.elf.file import read_build_id
from hpkg.loader.affected import scan_for_baselines

if TYPE_CHECKING:  # the fixtures' types; importing conftest at run time may find another directory's
    from conftest import Binary, Target


def _build_id(path: Path) -> str:
    return read_build_id(path.read_bytes()).hex()


def test_every_process_running_the_baseline_is_found_and_no_other(
    start_target: Callable[..., Target], binaries: dict[str, Binary]
) -> None:
    first = start_target("single", "read")
    second = start_target("single", "read")
    other = start_target("single-nopie", "read")
    found = scan_for_baselines([_build_id(binaries["single"].path)])
    pids = {p.pid for p in found.affected}
    assert {first.pid, second.pid} <= pids
    assert other.pid not in pids
    mine = [p for p in found.affected if p.pid == first.pid]
    assert mine[0].command == "single"
    assert mine[0].image.path == str(binaries["single"].path)
    assert mine[0].image.load_bias != 0  # a PIE, placed by the kernel


def test_a_baseline_deleted_on_disk_while_running_is_still_found(
    start_target: Callable[..., Target], binaries: dict[str, Binary], tmp_path: Path
) -> None:
    copy = tmp_path / "single-old"
    shutil.copy2(binaries["single"].path, copy)
    target = start_target("single", "read", executable=copy)
    copy.unlink()  # what `apt upgrade` does to the file a running service maps
    found = scan_for_baselines([_build_id(binaries["single"].path)], pids=[target.pid])
    assert [p.pid for p in found.affected] == [target.pid]
    assert found.affected[0].image.path.endswith(" (deleted)")


def test_a_shared_library_baseline_is_found_in_each_process_that_maps_it(
    start_target: Callable[..., Target],
) -> None:
    targets = [start_target("single", "read"), start_target("single-nopie", "read")]
    libc = next(line.split()[-1] for line in Path(f"/proc/{targets[0].pid}/maps").read_text().splitlines()
                if "/libc.so" in line)  # fmt: skip
    found = scan_for_baselines([_build_id(Path(libc))], pids=[t.pid for t in targets])
    assert sorted(p.pid for p in found.affected) == sorted(t.pid for t in targets)
    assert all("libc.so" in p.image.path for p in found.affected)


def test_processes_whose_maps_we_may_not_read_are_listed_apart(start_target: Callable[..., Target]) -> None:
    target = start_target("single", "read")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # as nobody, root's process is not ours to read
        os.close(read)
        os.setgid(65534)
        os.setuid(65534)
        found = scan_for_baselines(["00"], pids=[target.pid])
        os.write(write, repr(found.unreadable).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    os.waitpid(child, 0)
    assert reported == repr((target.pid,))


def test_processes_that_are_gone_are_skipped_silently() -> None:
    gone = 2**22 + 1  # above the kernel's pid_max limit: never a live process
    assert scan_for_baselines(["00"], pids=[gone]).affected == ()
