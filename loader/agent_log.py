"""The agent's log: one line per event on standard output, in a form journald reads as it is.

Each line starts with a syslog priority in angle brackets (`<3>` error, `<4>` warning, `<5>` notice,
`<6>` info, `<7>` debug), which journald strips and stores as the entry's PRIORITY when the unit
logs to the journal (systemd's SyslogLevelPrefix=, on by default); no timestamp, since journald
adds its own. Then the event's name and `key=value` fields (logfmt), so that a line is read by a
person and split by a program alike:

    <6>applied pid=4242 command=server image=/srv/server package=3f2a… level=1 pause_ms=0.412
        exec_to_patched_ms=21.7                                               (one line, folded here)

A value with a space, a quote or an equals sign is written as a JSON string; every value is escaped
for the terminal first (names come from targets and packages).
"""

from __future__ import annotations

import json
import sys
import threading
from enum import IntEnum
from typing import TextIO

from hpkg.loader.terminal import printable


class Priority(IntEnum):
    """syslog(3) levels, as journald's PRIORITY field holds them."""

    ERR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = printable(str(value))
    if not text or any(c in text for c in ' "=\\'):
        return json.dumps(text)
    return text


def format_line(priority: Priority, event: str, fields: dict[str, object]) -> str:
    """`<N>event key=value …`, fields whose value is None left out."""
    parts = [f"<{int(priority)}>{event}"]
    parts.extend(f"{key}={_value(value)}" for key, value in fields.items() if value is not None)
    return " ".join(parts)


def parse_line(line: str) -> tuple[int, str, dict[str, str]]:
    """The priority, event and fields of a line `format_line` wrote (for tests and the bench)."""
    head, _, rest = line.rstrip("\n").partition(">")
    priority = int(head.lstrip("<"))
    event, _, rest = rest.partition(" ")
    fields: dict[str, str] = {}
    decoder = json.JSONDecoder()
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            value, end = decoder.raw_decode(rest)
            rest = rest[end:].lstrip(" ")
        else:
            value, _, rest = rest.partition(" ")
        fields[key] = value
    return priority, event, fields


class EventLog:
    """Writes event lines to a stream (standard output by default), one whole line at a time."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()

    def write(self, priority: Priority, event: str, **fields: object) -> None:
        line = format_line(priority, event, fields) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                pass  # whoever read the log went away; the agent's work goes on

    def error(self, event: str, **fields: object) -> None:
        self.write(Priority.ERR, event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        self.write(Priority.WARNING, event, **fields)

    def notice(self, event: str, **fields: object) -> None:
        self.write(Priority.NOTICE, event, **fields)

    def info(self, event: str, **fields: object) -> None:
        self.write(Priority.INFO, event, **fields)

    def debug(self, event: str, **fields: object) -> None:
        self.write(Priority.DEBUG, event, **fields)
