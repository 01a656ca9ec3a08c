"""The one-page switch as one call of the window's helper: the same compare, write, check and state word
as the Python path, on a real stopped process."""

from __future__ import annotations

import ctypes

from hpkg.loader import window_native
from hpkg.loader.process import Process


def _runtime(process: Process, target, name: str) -> int:
    image = next(i for i in process.images() if i.path == str(target.binary.path))
    return image.runtime_address(target.binary.symbol(name)[0])


def test_the_helpers_switch_writes_the_span_then_the_state_word_and_refuses_a_changed_span(
    start_target, built_helper
):
    """A span that no longer holds what was read before the stop is refused with nothing written; one that
    does is written, read back, and then the state word is written; an unreadable span is reported."""
    target = start_target("single", "hold")
    target.wait_for(lambda line: line == "holding")
    process = Process(target.pid)
    site = _runtime(process, target, "answer_fixed")  # never called by the program
    state_at = _runtime(process, target, "answer") + 8  # any other bytes of the code page will do
    scratch = ctypes.create_string_buffer(5)
    fd = process.mem_descriptor()
    with process.stop_all_threads():
        before, state_before = process.read(site, 5), process.read(state_at, 3)
        jump = b"\xe9\x01\x02\x03\x04"
        wrong = bytes(b ^ 0xFF for b in before)
        refused = built_helper.switch_span(fd, site, wrong, jump, state_at, b"\xaa\xbb\xcc", scratch)
        unchanged = process.read(site, 5), process.read(state_at, 3)
        done = built_helper.switch_span(fd, site, before, jump, state_at, b"\xaa\xbb\xcc", scratch)
        written = process.read(site, 5), process.read(state_at, 3)
        unreadable = built_helper.switch_span(fd, 8, before, jump, 0, b"", scratch)
        process.write(site, before)
        process.write(state_at, state_before)
    assert refused == (window_native.SWITCH_CHANGED, 0) and unchanged == (before, state_before)
    assert done[0] == window_native.SWITCH_DONE and written == (jump, b"\xaa\xbb\xcc")
    assert unreadable[0] == window_native.SWITCH_UNREAD and unreadable[1] != 0
    assert process.read(site, 5) == before
    target.assert_running_untraced()
