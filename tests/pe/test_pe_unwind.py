"""The Windows x64 stack walker over real mingw-w64 output (pe/unwind_info.py, pe/virtual_unwind.py,
loader/wine_threads.py): every UNWIND_INFO of Wine's own ntdll.dll decodes as binutils reads it; one
function's prolog, body and epilog unwind by Windows' rules at each pc; and the frames of a thread
waiting in fgets under Wine, captured from the stopped process, are walked to its first frame through
read_number and main, and a walk that lacks a stack word or a module says so instead of guessing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pe_corpus import wine_environment  # noqa: E402

from hpkg.loader.pe_file import PeFile  # noqa: E402
from hpkg.loader.process import Process  # noqa: E402
from hpkg.loader.windows_code import WindowsCode, module_of_file, windows_code  # noqa: E402
from hpkg.loader.wine_threads import Kind, thread_frames, word_reader  # noqa: E402
from hpkg.pe.coff_symbols import symbol_rvas  # noqa: E402
from hpkg.pe.constants import (  # noqa: E402
    IMAGE_DIRECTORY_ENTRY_EXCEPTION,
    UWOP_ALLOC_LARGE,
    UWOP_ALLOC_SMALL,
    UWOP_PUSH_MACHFRAME,
    UWOP_PUSH_NONVOL,
    UWOP_SAVE_NONVOL,
    UWOP_SAVE_NONVOL_FAR,
    UWOP_SAVE_XMM128,
    UWOP_SAVE_XMM128_FAR,
    UWOP_SET_FPREG,
)
from hpkg.pe.pdata import runtime_functions  # noqa: E402
from hpkg.pe.unwind_info import UnwindInfo, decode_unwind_info  # noqa: E402
from hpkg.pe.virtual_unwind import REGISTER_NAMES, Context, unwind_frame, walk  # noqa: E402

PROGRAMS = Path(__file__).resolve().parent / "programs"
WINE_NTDLL = Path("/usr/lib/x86_64-linux-gnu/wine/x86_64-windows/ntdll.dll")
BASE = 0x140000000  # the mingw executable's ImageBase


def _objdump_codes(path: Path) -> dict[int, tuple[str, list[str]]]:
    """UNWIND_INFO RVA → (its header line, its code lines), as `objdump -x` prints them."""
    text = subprocess.run(["x86_64-w64-mingw32-objdump", "-x", str(path)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    found: dict[int, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        head = re.match(r"^ [0-9a-f]+ \(rva: ([0-9a-f]+)\): ", line)
        if head:
            current = []
            found[int(head.group(1), 16)] = ("", current)
        elif current is not None and line.strip().startswith("Nbr codes:"):
            rva = next(r for r, (_h, codes) in found.items() if codes is current)
            found[rva] = (line.strip(), current)
        elif current is not None and line.strip().startswith("pc+"):
            current.append(line.strip())
    return found


def _as_objdump(info: UnwindInfo) -> list[str]:
    """Our decoding in objdump's words (the start of each line)."""
    out = []
    for c in info.codes:
        reg = REGISTER_NAMES[c.register]
        what = {
            UWOP_PUSH_NONVOL: f"push {reg}",
            UWOP_ALLOC_LARGE: f"alloc large area: rsp = rsp - {c.amount:#x}",
            UWOP_ALLOC_SMALL: f"alloc small area: rsp = rsp - {c.amount:#x}",
            UWOP_SET_FPREG: f"FPReg: {REGISTER_NAMES[info.frame_register]} = rsp + {info.frame_offset:#x}",
            UWOP_SAVE_NONVOL: f"save {reg} at rsp + {c.amount:#x}",
            UWOP_SAVE_NONVOL_FAR: f"save {reg} at rsp + {c.amount:#x}",
            UWOP_SAVE_XMM128: f"save xmm{c.register} at rsp + {c.amount:#x}",
            UWOP_SAVE_XMM128_FAR: f"save xmm{c.register} at rsp + {c.amount:#x}",
            UWOP_PUSH_MACHFRAME: "interrupt entry",
        }[c.op]
        out.append(f"pc+{c.prolog_offset:#04x}: {what}")
    return out


@pytest.mark.skipif(not WINE_NTDLL.exists(), reason="Wine's ntdll.dll is installed by make test-deps")
def test_every_unwind_info_of_wines_ntdll_decodes_as_objdump_reads_it() -> None:
    pe = PeFile.open(WINE_NTDLL)
    entries = runtime_functions(pe.read_rva, *pe.headers.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION))
    listed = _objdump_codes(WINE_NTDLL)
    kinds = set()
    assert len(entries) > 1000
    for entry in entries:
        info = decode_unwind_info(pe.read_rva, entry.unwind)
        header, codes = listed[entry.unwind]
        assert f"Prologue size: {info.prolog_size:#04x}" in header, (hex(entry.begin), header)
        ours = _as_objdump(info)
        assert len(ours) == len(codes) and all(t.startswith(o) for o, t in zip(ours, codes, strict=True)), (
            hex(entry.begin), ours, codes)
        kinds.update(c.op for c in info.codes)
    # The file has every kind a walk meets in practice: pushes, both allocations, a frame register,
    # register and xmm saves, and a machine frame (KiUserExceptionDispatcher's).
    assert {UWOP_PUSH_NONVOL, UWOP_ALLOC_LARGE, UWOP_ALLOC_SMALL, UWOP_SET_FPREG, UWOP_SAVE_NONVOL,
            UWOP_SAVE_XMM128, UWOP_PUSH_MACHFRAME} <= kinds  # fmt: skip


def _build(tmp_path: Path, *flags: str) -> Path:
    exe = tmp_path / "blocked.exe"
    subprocess.run(["x86_64-w64-mingw32-gcc", "-O2", *flags, str(PROGRAMS / "blocked.c"), "-o", str(exe)],
                   check=True, capture_output=True)  # fmt: skip
    return exe


def _code(exe: Path) -> tuple[WindowsCode, dict[str, int]]:
    """The executable as its only module, at its ImageBase, and its functions' runtime addresses."""
    pe = PeFile.open(exe)
    text = next(s for s in pe.headers.sections if s.name == ".text")
    executable = ((BASE + text.virtual_address, BASE + text.virtual_address + text.size),)
    symbols = symbol_rvas(pe.headers, pe.data, ("read_number", "main"))
    return WindowsCode((module_of_file(str(exe), exe.name, BASE, executable),)), {
        name: BASE + rva for name, rva in symbols.items()
    }


def test_one_function_unwinds_by_its_prolog_body_and_epilog_at_each_pc(pe_corpus, tmp_path) -> None:
    """read_number as mingw compiles it: push rbx (+1); sub rsp, 0x60 (+5); …; add rsp, 0x60 (+0x2f);
    pop rbx; ret; and a `jmp` back into the body (+0x3a), which is no epilog. Its caller's rip and rbx
    come out of the same stack at every pc, as far as the function had pushed and allocated."""
    code, symbols = _code(_build(tmp_path))
    start = symbols["read_number"]
    body = code(start + 0x22, caller=True)
    assert body is not None and body.function is not None and body.function.begin == start
    stack_top = 0x10000
    words = {stack_top + 8 * i: 0x5000 + i for i in range(32)}  # a stack the frame sits at the bottom of

    def unwind(offset: int, rsp: int) -> Context:
        at = code(start + offset, caller=False)
        assert at is not None
        return unwind_frame(Context.of(start + offset, rsp=rsp, rbx=1), at, words.get)

    caller = unwind(0x22, stack_top)  # in the body: 0x60 allocated, rbx pushed above it
    assert (caller.rip, caller.rsp, caller.registers[3]) == (words[stack_top + 0x68], stack_top + 0x70,
                                                             words[stack_top + 0x60])  # fmt: skip
    places = ((0x2F, stack_top), (0x3A, stack_top), (0x33, stack_top + 0x60), (0x34, stack_top + 0x68))
    for offset, rsp in places:
        assert unwind(offset, rsp).rip == caller.rip, hex(offset)  # epilog, jump back, pop, ret
    assert unwind(0x33, stack_top + 0x60).registers[3] == caller.registers[3]
    assert unwind(0x01, stack_top + 0x60) == caller  # after the push only
    assert unwind(0x00, stack_top + 0x68).rip == caller.rip  # before the prolog: as a leaf
    assert unwind(0x00, stack_top + 0x68).registers[3] == 1  # rbx not saved yet: the caller's own


def test_a_wine_thread_waiting_in_fgets_is_walked_to_its_first_frame(pe_corpus, tmp_path) -> None:
    """Captured from the stopped process: the main thread waits in NtReadFile on Wine's Unix side; from
    the frame Wine saved, its walk passes msvcrt's fgets, read_number, main, the C runtime's start and
    kernel32 to ntdll's thread start, and ends there. Without main's module, or with the stack cut short
    under main's frame, the same walk stops and says why."""
    exe = _build(tmp_path)
    program = subprocess.Popen(["wine", str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, **wine_environment()})  # fmt: skip
    try:
        assert program.stdin is not None and program.stdout is not None
        program.stdin.write("x\n")
        program.stdin.flush()
        assert program.stdout.readline().strip() == "-2"
        program.stdin.write("r\n")  # main → read_number → fgets: waiting for the next line
        program.stdin.flush()
        process = Process(program.pid)
        walked = None
        for _attempt in range(50):  # until the thread has reached the read (it runs on from the "r")
            code = windows_code(process)
            with process.stop_all_threads() as stopped:
                registers = [dataclasses.astuple(stopped.regs(tid)) for tid in stopped.tids]
                walks = thread_frames(process.pid, registers, code, 1 << 20)
                frames = dict(zip(stopped.tids, walks, strict=True))
            main_frames = frames[program.pid]
            if main_frames.kind is Kind.WALKED and main_frames.saved:
                walked = main_frames
                break
        assert walked is not None, main_frames
        pe = PeFile.open(exe)
        symbols = symbol_rvas(pe.headers, pe.data, ("read_number", "main"))
        image = next(m for m in code.modules if m.name.endswith("blocked.exe"))
        owner = [code.module_at(pc) for pc in walked.pcs]
        assert all(m is not None for m in owner)
        names = [m.name.rsplit("/", 1)[-1] for m in owner]  # type: ignore[union-attr]
        assert names[0] == "ntdll.dll" and names[-1] == "ntdll.dll" and "kernel32.dll" in names
        def function_of(pc: int) -> int | None:  # the start of the function a return address is in
            at = code(pc, caller=True)
            return at.function.begin - image.base if at is not None and at.function is not None else None

        in_image = [pc for pc in walked.pcs if code.module_at(pc) is image]
        at = [function_of(pc) for pc in in_image].index(symbols["read_number"])
        assert function_of(in_image[at + 1]) == symbols["main"]  # read_number's caller is main
        main_pc = in_image[at + 1]
        assert all(f.kind in (Kind.WALKED, Kind.UNIX) for f in frames.values())

        start, (low, data) = walked.start, walked.stack
        assert start is not None
        whole = walk(start, code, word_reader(low, data), low + len(data))
        assert whole.pcs == walked.pcs and whole.problem is None
        cut = walk(start, code, word_reader(low, data[: 0x10]), low + len(data))
        assert cut.problem is not None and "was not read" in cut.problem
        without = WindowsCode(tuple(m for m in code.modules if m is not image))
        stopped_at = walk(start, without, word_reader(low, data), low + len(data))
        assert stopped_at.problem is not None and "in no Windows code" in stopped_at.problem
        assert main_pc not in stopped_at.pcs
    finally:
        program.kill()
        program.wait()
