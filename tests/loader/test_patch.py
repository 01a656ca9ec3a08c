"""A minimal real live patch: a jump over a running function's entry changes the program's output."""

from __future__ import annotations

import pytest

from hpkg.arch import x86_64
from hpkg.loader import safety
from hpkg.loader.process import Process


def runtime_function(process: Process, target, name: str) -> tuple[int, int]:
    image = next(i for i in process.images() if i.path == str(target.binary.path))
    link_address, size = target.binary.symbol(name)
    return image.runtime_address(link_address), size


def answers_after(target, mark: int, count: int = 3) -> set[str]:
    return {m.group(2) for m in target.ticks_after(mark, count)}


@pytest.mark.parametrize(
    ("program", "args", "encoding"),
    [
        ("single", ("loop",), "rel32"),
        ("single-nopie", ("loop",), "rel32"),
        ("threads", (), "rel32"),
        ("single", ("loop",), "absolute"),
    ],
)
def test_jump_at_entry_switches_and_restoring_bytes_switches_back(start_target, program, args, encoding):
    target = start_target(program, *args)
    process = Process(target.pid)
    answer, answer_size = runtime_function(process, target, "answer")
    fixed, _ = runtime_function(process, target, "answer_fixed")
    assert answers_after(target, target.mark()) == {"1"}
    if encoding == "rel32":
        jump = x86_64.encode_jmp_rel32(answer, fixed)
        assert len(jump) == 5
    else:
        jump = x86_64.encode_abs_jmp(fixed)
        assert fixed - answer >= len(jump), "the stub would overwrite answer_fixed itself"
    pre_image = process.read(answer, len(jump))
    replaced = [safety.CodeRange("answer", answer, answer + answer_size)]
    windows = [safety.CodeRange("answer", answer, answer + len(jump))]
    with safety.stop_when_safe(process, replaced, windows, timeout=10) as stopped:
        stopped.write(answer, jump)
        mark = target.mark()
    target.assert_running_untraced()
    assert stopped.pause > 0
    assert process.read(answer, len(jump)) == jump
    # Lines after the switch come from the fixed function; the first may have been computed before
    # the stop and printed after it, so it is skipped.
    assert {m.group(2) for m in target.ticks_after(mark, 4)[1:]} == {"2"}
    with safety.stop_when_safe(process, [], windows, timeout=10) as stopped:
        stopped.write(answer, pre_image)
        mark = target.mark()
    assert process.read(answer, len(jump)) == pre_image
    assert {m.group(2) for m in target.ticks_after(mark, 4)[1:]} == {"1"}
    target.assert_running_untraced()
