"""Read a process from /proc: its mappings, its threads, and the ELF images it has loaded.

An image (the main executable, a shared library, the vDSO) is found by the GNU build-id in its
PT_NOTE, read from the mapped file (through /proc/PID/map_files, which also reaches deleted
files) or, failing that, from the target's memory. Its load bias is the runtime address of link
address 0: nonzero for PIE executables and shared objects, 0 for a non-PIE executable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from hpkg.elf.constants import PF_X
from hpkg.elf.headers import ElfHeaders, Reader, read_headers
from hpkg.elf.notes import segment_build_id
from hpkg.elf.structs import ProgramHeader
from hpkg.errors import ImageError, TargetError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_SIGKILL_BIT = 1 << (9 - 1)  # SIGKILL (9) in the pending-signal masks of /proc/PID/status
_DELETED = " (deleted)"
MAX_NOTE_SEGMENT = 1 << 16  # bytes of one PT_NOTE read to find a build-id


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps: a runtime address range and what backs it."""

    start: int
    end: int
    perms: str  # e.g. "r-xp"
    offset: int  # file offset of `start`
    dev: str  # "major:minor" in hex
    inode: int
    path: str  # "" for anonymous memory; "[stack]", "[heap]", "[vdso]"; a path, maybe "… (deleted)"

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def deleted(self) -> bool:
        """The backing file was unlinked after mapping (the kernel appends " (deleted)")."""
        return self.path.endswith(_DELETED)

    @property
    def file_path(self) -> str:
        """The path without the " (deleted)" marker."""
        return self.path[: -len(_DELETED)] if self.deleted else self.path

    def contains(self, runtime_address: int) -> bool:
        """Whether a runtime address falls inside this mapping."""
        return self.start <= runtime_address < self.end


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD program header: where a part of the file goes, in link addresses."""

    link_address: int  # p_vaddr
    file_offset: int  # p_offset
    file_size: int  # p_filesz
    memory_size: int  # p_memsz
    flags: int  # PF_R | PF_W | PF_X

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)


@dataclass(frozen=True)
class RuntimeImage:
    """An ELF image loaded in a process: its build-id, load bias, segments and mappings."""

    path: str  # the mapped path ("[vdso]" for the vDSO), with " (deleted)" when unlinked
    build_id: str  # lowercase hex, as `readelf -n` prints it; "" when the image has none
    load_bias: int  # runtime address of link address 0; 0 for a non-PIE executable
    elf_type: int  # ET_EXEC or ET_DYN
    segments: tuple[Segment, ...]
    mappings: tuple[Mapping, ...]

    @property
    def start(self) -> int:
        """Lowest runtime address of the image's mappings."""
        return min(m.start for m in self.mappings)

    @property
    def end(self) -> int:
        """End of the image's highest segment, page-rounded (covers .bss beyond the file)."""
        seg_end = max((self.load_bias + s.link_address + s.memory_size for s in self.segments), default=0)
        return max(page_up(seg_end), max(m.end for m in self.mappings))

    def runtime_address(self, link_address: int) -> int:
        """Convert a link address (as in the ELF file) to this image's runtime address."""
        return self.load_bias + link_address

    def link_address(self, runtime_address: int) -> int:
        """Convert a runtime address inside this image back to its link address."""
        return runtime_address - self.load_bias


def _page_down(value: int) -> int:
    return value & ~(PAGE_SIZE - 1)


def page_up(value: int) -> int:
    """Round `value` up to a page boundary of this machine."""
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def parse_maps_line(line: str) -> Mapping:
    """Parse one /proc/PID/maps line; the path may contain spaces."""
    parts = line.rstrip("\n").split(None, 5)
    start, end = (int(x, 16) for x in parts[0].split("-"))
    path = parts[5] if len(parts) > 5 else ""
    return Mapping(start, end, parts[1], int(parts[2], 16), parts[3], int(parts[4]), path)


def read_maps(pid: int) -> tuple[Mapping, ...]:
    """All mappings of a process, in address order."""
    return parse_maps(read_maps_text(pid))


def read_maps_text(pid: int) -> bytes:
    """The /proc/PID/maps text as it is now (a caller that compares it with an earlier one, or parses it)."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as maps:
            return maps.read()
    except FileNotFoundError:
        raise TargetError(f"no such process: {pid}") from None
    except PermissionError:
        raise TargetError(f"permission denied reading /proc/{pid}/maps; {permission_advice()}") from None


def parse_maps(text: bytes) -> tuple[Mapping, ...]:
    """The mappings of a /proc/PID/maps text, in its (address) order."""
    # Split on b"\n" alone, the kernel's record separator (it escapes one in a path as \012); a path may
    # hold any other byte, \r and U+2028 included.
    lines = (raw.decode("utf-8", "surrogateescape") for raw in text.split(b"\n"))
    return tuple(parse_maps_line(line) for line in lines if line.strip())


def permission_advice() -> str:
    """What a user refused access to a process can do: run as its user or root, unless already root."""
    if os.geteuid() == 0:
        # Root is refused only by a restriction of the machine: a /proc mounted with hidepid= in another
        # namespace, a Yama or LSM policy, a process of another user namespace, or CAP_SYS_PTRACE dropped
        # from this root's capability set (a container).
        return ("refused even to root: a security module, a hidepid= /proc, another user namespace "
                "or a dropped CAP_SYS_PTRACE forbids it")
    return "run as the target's user or as root (CAP_SYS_PTRACE)"


def list_tids(pid: int) -> tuple[int, ...]:
    """The thread ids of a process (/proc/PID/task), sorted, the main thread first."""
    try:
        tids = sorted(int(name) for name in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise TargetError(f"no such process: {pid}") from None
    return tuple(sorted(tids, key=lambda tid: tid != pid))


def start_time(pid: int) -> int:
    """When the process started, in clock ticks since boot (/proc/PID/stat field 22); 0 when gone.

    A pid and its start time name one process for good: a reused pid has a later start time.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    # The command name (field 2) may contain spaces and parentheses: split after its last ")".
    return int(text[text.rindex(")") + 2 :].split()[19])


def thread_status(pid: int, tid: int) -> dict[str, str]:
    """The fields of /proc/PID/task/TID/status; empty when the thread is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/status", encoding="utf-8", errors="replace") as status:
            return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return {}


def thread_state(pid: int, tid: int) -> str:
    """The one-letter scheduler state of a thread (R, S, D, T, t, Z, X), or "" when gone."""
    return thread_status(pid, tid).get("State", " ")[:1].strip()


def has_exited(pid: int, started: int) -> bool:
    """Whether the process that was `pid` when it had start time `started` has exited, or is exiting.

    A process being killed has SIGKILL pending while its threads exit, and releases its memory map
    before it turns zombie: /proc/PID/maps is then empty, which no running user process shows (its
    refusals then read as "runs another build"). A different start time means the pid now names
    another process.
    """
    status = thread_status(pid, pid)
    if start_time(pid) != started or status.get("State", " ")[:1] in (" ", "Z", "X"):
        return True
    pending = int(status.get("ShdPnd", "0"), 16) | int(status.get("SigPnd", "0"), 16)
    if pending & _SIGKILL_BIT:
        return True
    try:
        with open(f"/proc/{pid}/maps", "rb") as maps:
            return not maps.read(1)
    except OSError:
        return True


def _read_headers(read: Reader, what: str) -> ElfHeaders | None:
    """The ELF and program headers through `read(file_offset, size)`; None if not an x86-64 image."""
    try:
        return read_headers(read, what)
    except ImageError:
        return None


def _segment(p: ProgramHeader) -> Segment:
    return Segment(p.vaddr, p.offset, p.filesz, p.memsz, p.flags)


class _FileReader:
    """Positional reads from an open file; `open()` returns None when the file cannot be opened."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, path: str) -> _FileReader | None:
        try:
            return cls(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return None

    def read(self, offset: int, size: int) -> bytes:
        try:
            return os.pread(self.fd, size, offset)
        except OSError:
            return b""

    def close(self) -> None:
        os.close(self.fd)


def _mem_reader(pid: int) -> Callable[[int, int], bytes]:
    """A `read(runtime_address, size)` over a process's memory through /proc/PID/mem."""

    def read(address: int, size: int) -> bytes:
        try:
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
                mem.seek(address)
                return mem.read(size) or b""
        except OSError:
            return b""

    return read


def _open_image_file(pid: int, first: Mapping) -> _FileReader | None:
    """Open the file behind an image's first mapping: map_files first (exact, even deleted), then the path."""
    reader = _FileReader.open(f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}")
    if reader is not None:
        return reader
    if first.deleted or not first.path.startswith("/"):
        return None
    try:
        if os.stat(first.path).st_ino != first.inode:
            return None  # the path now names another file (replaced on disk)
    except OSError:
        return None
    return _FileReader.open(first.path)


def _note_reader(
    file: _FileReader | None, memory: Callable[[int, int], bytes], load_bias: int
) -> Callable[[ProgramHeader], bytes]:
    """Notes come from where the headers came from: the file by offset, or memory by address.

    A note segment is read up to MAX_NOTE_SEGMENT bytes: the file (any file a process maps) chooses
    p_filesz, and a huge one must not become a huge read (a build-id note is 36 bytes).
    """
    if file is not None:
        return lambda p: file.read(p.offset, min(p.filesz, MAX_NOTE_SEGMENT))
    return lambda p: memory(load_bias + p.vaddr, min(p.filesz, MAX_NOTE_SEGMENT))


def image_from(pid: int, mappings: list[Mapping], from_memory: bool = False) -> RuntimeImage | None:
    """Build a RuntimeImage from the mappings of one file (the first at file offset 0), or None if not ELF."""
    first = mappings[0]
    memory = _mem_reader(pid)
    file = None if first.path == "[vdso]" or from_memory else _open_image_file(pid, first)
    try:
        if file is not None:
            headers = _read_headers(file.read, first.path)
        else:
            headers = _read_headers(lambda offset, size: memory(first.start + offset, size), first.path)
        if headers is None:
            return None
        # The lowest PT_LOAD maps file page page_down(p_offset) — the first mapping, at file offset
        # 0 — to runtime address bias + page_down(p_vaddr).
        base = min(headers.loads, key=lambda p: p.vaddr)
        load_bias = first.start - (_page_down(base.vaddr) - _page_down(base.offset))
        build_id = segment_build_id(headers.program_headers, _note_reader(file, memory, load_bias)).hex()
    finally:
        if file is not None:
            file.close()
    segments = tuple(_segment(p) for p in headers.loads)
    return RuntimeImage(first.path, build_id, load_bias, headers.elf_type, segments, tuple(mappings))


def group_by_file(maps: tuple[Mapping, ...]) -> list[list[Mapping]]:
    """Group file-backed mappings into one list per loaded file, each starting at file offset 0."""
    groups: list[list[Mapping]] = []
    open_groups: dict[tuple[str, int, str], list[Mapping]] = {}
    for mapping in maps:
        if mapping.path == "[vdso]":
            groups.append([mapping])
            continue
        if mapping.inode == 0:
            continue
        key = (mapping.dev, mapping.inode, mapping.path)
        if mapping.offset == 0:
            open_groups[key] = [mapping]
            groups.append(open_groups[key])
        elif key in open_groups:
            open_groups[key].append(mapping)
    return groups


def list_images(
    pid: int, maps: tuple[Mapping, ...] | None = None, from_memory: bool = False
) -> tuple[RuntimeImage, ...]:
    """Every ELF image mapped in a process, in address order.

    Headers and notes come from the mapped files unless `from_memory` (or no file can be opened),
    in which case they are read from the image's first mapping in the target's memory.
    """
    images = []
    for group in group_by_file(maps if maps is not None else read_maps(pid)):
        image = image_from(pid, group, from_memory)
        if image is not None:
            images.append(image)
    return tuple(images)


def find_images_by_build_id(pid: int, build_id: str) -> list[RuntimeImage]:
    """The images in a process whose GNU build-id equals `build_id` (hex, any case)."""
    wanted = build_id.lower()
    return [image for image in list_images(pid) if image.build_id and image.build_id == wanted]
