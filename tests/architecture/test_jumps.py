"""x86-64 jump encodings: the 5-byte rel32 jump, its reach, and the 14-byte absolute stub."""

from __future__ import annotations

import subprocess

import pytest

from hpkg.arch import x86_64


def objdump_disassembly(code: bytes, address: int, tmp_path) -> str:
    """One line of `objdump -D` for raw bytes placed at `address`: an independent decoder."""
    blob = tmp_path / "code.bin"
    blob.write_bytes(code)
    out = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", f"--adjust-vma={address:#x}", str(blob)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.strip().startswith(f"{address:x}:")][0]


def test_rel32_jump_is_five_bytes_and_objdump_agrees(tmp_path):
    site, target = 0x555555554000, 0x555555554000 + 0x12345
    code = x86_64.encode_jmp_rel32(site, target)
    assert len(code) == x86_64.JMP_REL32_SIZE == 5 and code[0] == 0xE9
    assert x86_64.decode_jmp_rel32(site, code) == target
    assert f"jmp    {target:#x}" in objdump_disassembly(code, site, tmp_path)


def test_backward_jump_round_trips(tmp_path):
    site, target = 0x7F0000100000, 0x7F0000100000 - 0x7FFF0000
    code = x86_64.encode_jmp_rel32(site, target)
    assert x86_64.decode_jmp_rel32(site, code) == target
    assert f"jmp    {target:#x}" in objdump_disassembly(code, site, tmp_path)


def test_reach_is_exactly_the_signed_32_bit_displacement():
    site = 0x40000000
    assert x86_64.rel32_reaches(site, site + 5 + (1 << 31) - 1)
    assert not x86_64.rel32_reaches(site, site + 5 + (1 << 31))
    assert x86_64.rel32_reaches(site, site + 5 - (1 << 31))
    assert not x86_64.rel32_reaches(site, site + 5 - (1 << 31) - 1)
    with pytest.raises(ValueError, match="beyond"):
        x86_64.encode_jmp_rel32(site, site + (1 << 32))


def test_absolute_stub_reaches_anywhere(tmp_path):
    target = 0x7FFF12345678
    code = x86_64.encode_abs_jmp(target)
    assert len(code) == x86_64.ABS_JMP_SIZE == 14
    assert x86_64.decode_abs_jmp(code) == target
    assert "jmp    *0x0(%rip)" in objdump_disassembly(code, 0x400000, tmp_path)
    assert x86_64.encode_jump(0x400000, target) == code
    assert x86_64.encode_jump(0x400000, 0x400100) == x86_64.encode_jmp_rel32(0x400000, 0x400100)
    assert x86_64.decode_jmp_rel32(0x400000, code) is None and x86_64.decode_abs_jmp(code[:5]) is None
