"""procfs: mappings, threads, images, build-ids and load bias of live gcc-compiled processes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from hpkg.elf.constants import ET_DYN, ET_EXEC
from hpkg.errors import TargetError
from hpkg.loader import procfs
from hpkg.loader.process import Process


def readelf_build_id(path: str) -> str:
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True, check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)  # type: ignore[union-attr]


def file_bytes_at_link_address(path: str, link_address: int, size: int) -> bytes:
    """Bytes of the file at a link address, found through `readelf -lW` program headers."""
    out = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["LOAD"]:
            offset, vaddr, filesz = int(parts[1], 16), int(parts[2], 16), int(parts[4], 16)
            if vaddr <= link_address < vaddr + filesz:
                with open(path, "rb") as f:
                    f.seek(offset + link_address - vaddr)
                    return f.read(size)
    raise AssertionError("address not in any LOAD segment")


def test_maps_parse_main_executable_and_stack(start_target):
    target = start_target("single", "loop")
    maps = procfs.read_maps(target.pid)
    assert [m.start for m in maps] == sorted(m.start for m in maps)
    exe = os.path.realpath(f"/proc/{target.pid}/exe")
    executable = [m for m in maps if m.path == exe]
    assert any(m.executable for m in executable) and executable[0].offset == 0
    assert executable[0].inode == os.stat(exe).st_ino
    assert any(m.path == "[stack]" and m.writable and not m.executable for m in maps)
    with open(f"/proc/{target.pid}/maps") as f:
        assert len(maps) == len(f.readlines())


def test_list_tids_of_eight_thread_process(start_target):
    target = start_target("threads")
    tids = procfs.list_tids(target.pid)
    assert len(tids) == 8
    assert tids[0] == target.pid
    assert sorted(tids) == target.tids()


@pytest.mark.parametrize("name", ["single", "single-nopie"])
def test_build_id_and_load_bias_match_readelf_and_memory(start_target, binaries, name):
    target = start_target(name, "loop")
    path = str(binaries[name].path)
    images = procfs.find_images_by_build_id(target.pid, readelf_build_id(path))
    assert len(images) == 1
    image = images[0]
    assert image.path == path
    if name == "single-nopie":
        assert image.elf_type == ET_EXEC and image.load_bias == 0
    else:
        assert image.elf_type == ET_DYN and image.load_bias > 0
    # The load bias is right if the code at the runtime address of `answer` is the file's code.
    link_address, size = binaries[name].symbol("answer")
    runtime = Process(target.pid).read(image.runtime_address(link_address), size)
    assert runtime == file_bytes_at_link_address(path, link_address, size)


def test_libc_build_id_matches_readelf(start_target):
    target = start_target("single", "loop")
    libc = [i for i in procfs.list_images(target.pid) if "libc.so" in i.path]
    assert len(libc) == 1
    assert libc[0].build_id == readelf_build_id(libc[0].path)
    assert procfs.find_images_by_build_id(target.pid, libc[0].build_id.upper()) == libc


def test_images_read_from_memory_match_images_read_from_files(start_target):
    target = start_target("threads")
    from_files = procfs.list_images(target.pid)
    from_memory = procfs.list_images(target.pid, from_memory=True)
    assert [(i.path, i.build_id, i.load_bias, i.segments) for i in from_memory] == [
        (i.path, i.build_id, i.load_bias, i.segments) for i in from_files
    ]
    assert {i.path.rsplit("/", 1)[-1].split(".")[0] for i in from_files} >= {"threads", "libc", "[vdso]"}


def test_deleted_executable_still_found_by_build_id(start_target, binaries, tmp_path):
    copy = tmp_path / "doomed"
    shutil.copy(binaries["single"].path, copy)
    build_id = readelf_build_id(str(copy))
    target = start_target("single", "loop", executable=copy)
    copy.unlink()
    images = procfs.find_images_by_build_id(target.pid, build_id)
    assert len(images) == 1
    assert images[0].path.endswith(" (deleted)")
    assert all(m.deleted for m in images[0].mappings)


def test_other_build_id_finds_nothing(start_target):
    target = start_target("single", "loop")
    assert procfs.find_images_by_build_id(target.pid, "00" * 20) == []


def test_missing_process_is_a_target_error():
    with pytest.raises(TargetError, match="no such process"):
        procfs.read_maps(2**22 + 12345)
    with pytest.raises(TargetError, match="no such process"):
        Process(2**22 + 12345)
