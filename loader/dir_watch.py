"""Changes to a few directories (the store's), as a descriptor a select loop can wait on: inotify(7).

The agent must notice `hpkg install` and `hpkg uninstall` at once (a process started right after an
install is to be patched) without polling the store while idle. Python has no inotify binding, so
the three system calls are reached through libc with ctypes; the events themselves are not parsed
(any change means "read the store again"), only drained.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from hpkg.errors import TargetError

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# <sys/inotify.h>: a file written and closed, created, deleted or renamed in or out of the directory.
IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x8, 0x40, 0x80, 0x100, 0x200
IN_ATTRIB = 0x4  # a chmod or chown: a key or package may become acceptable, or stop being so
IN_DONT_FOLLOW = 0x02000000
IN_ONLYDIR = 0x01000000
_CHANGES = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class DirectoryWatch:
    """An inotify descriptor watching directories for files appearing, changing or going away."""

    def __init__(self, directories: list[Path]) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise TargetError(f"cannot watch the store: inotify: {os.strerror(ctypes.get_errno())}")
        self._fd = fd
        for directory in directories:
            mask = _CHANGES | IN_DONT_FOLLOW | IN_ONLYDIR
            if _libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
                error = os.strerror(ctypes.get_errno())
                self.close()
                raise TargetError(f"cannot watch {directory}: {error}")

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> bool:
        """Read every queued event; whether there was any."""
        changed = False
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return changed
            except InterruptedError:
                continue
            if not chunk:
                return changed
            changed = True

    def close(self) -> None:
        """Stop watching; safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DirectoryWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
