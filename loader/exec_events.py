"""Process start events from the kernel: the netlink process connector (exec, fork, exit).

A machine-wide hotpatch must reach processes that start after it was applied: a worker forked
later, a service restarted by its supervisor. Polling /proc would either miss short windows or cost
CPU while idle; the kernel's process connector (CONFIG_PROC_EVENTS, root only) sends one datagram
per exec instead, so the agent sleeps until something starts. An overrun of the socket's buffer
(ENOBUFS: events were dropped) is reported as such, so that the caller rescans /proc rather than
miss a process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from hpkg.errors import TargetError

NETLINK_CONNECTOR = 11  # <linux/netlink.h>
CN_IDX_PROC = 1  # <linux/connector.h>: the process events connector
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1  # <linux/cn_proc.h>: enum proc_cn_mcast_op
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3  # the message type a connector request is sent with
NLMSG_ERROR = 2
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # cb_id.idx, cb_id.val, seq, ack, len, flags
_EVENT_HEADER = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_RECEIVE_SIZE = 1 << 16
_SOCKET_BUFFER = 1 << 22  # bursts of thousands of forks (a build) fit before ENOBUFS


class EventKind(IntEnum):
    """`what` of struct proc_event (the kinds hpkg acts on)."""

    FORK = 0x00000001
    EXEC = 0x00000002
    EXIT = 0x80000000


@dataclass(frozen=True)
class ProcessEvent:
    """One event: for EXEC the process that exec'd; for FORK the child; for EXIT the one that ended."""

    kind: EventKind
    pid: int  # the thread's id (a new thread is a FORK whose pid differs from its tgid)
    tgid: int  # the process (thread group) id: what /proc/PID names
    parent_tgid: int = 0  # FORK only
    timestamp_ns: int = 0  # when the kernel saw it, on CLOCK_MONOTONIC (time.monotonic_ns's clock)


@dataclass(frozen=True)
class Overrun:
    """The kernel dropped events (the socket buffer filled): rescan /proc to catch up."""


def parse_events(datagram: bytes) -> Iterator[ProcessEvent]:
    """The process events in one datagram from the connector; other kinds and malformed tails are skipped."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(datagram):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(datagram, offset)
        if length < _NLMSGHDR.size or offset + length > len(datagram):
            return
        body = offset + _NLMSGHDR.size
        if kind != NLMSG_ERROR and length >= _NLMSGHDR.size + _CN_MSG.size + _EVENT_HEADER.size:
            event = _parse_event(datagram, body, offset + length)
            if event is not None:
                yield event
        offset += (length + 3) & ~3  # NLMSG_ALIGN


def _parse_event(datagram: bytes, body: int, end: int) -> ProcessEvent | None:
    idx, val, _seq, _ack, _length, _flags = _CN_MSG.unpack_from(datagram, body)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return None
    at = body + _CN_MSG.size
    # timestamp_ns is the kernel's ktime_get_ns(): CLOCK_MONOTONIC, comparable with time.monotonic_ns().
    what, _cpu, timestamp = _EVENT_HEADER.unpack_from(datagram, at)
    data = at + _EVENT_HEADER.size
    if what == EventKind.EXEC and data + 8 <= end:
        pid, tgid = struct.unpack_from("=II", datagram, data)
        return ProcessEvent(EventKind.EXEC, pid, tgid, 0, timestamp)
    if what == EventKind.FORK and data + 16 <= end:
        _parent_pid, parent_tgid, child_pid, child_tgid = struct.unpack_from("=IIII", datagram, data)
        return ProcessEvent(EventKind.FORK, child_pid, child_tgid, parent_tgid, timestamp)
    if what == EventKind.EXIT and data + 8 <= end:
        pid, tgid = struct.unpack_from("=II", datagram, data)
        return ProcessEvent(EventKind.EXIT, pid, tgid, 0, timestamp)
    return None


def _control(op: int) -> bytes:
    """A PROC_CN_MCAST_* request: nlmsghdr, cn_msg and the 4-byte operation."""
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0)
    total = _NLMSGHDR.size + len(cn) + len(payload)
    return _NLMSGHDR.pack(total, NLMSG_DONE, 0, 0, 0) + cn + payload


class ExecEvents:
    """A subscription to the process connector; use as a context manager, then iterate `events()`."""

    def __init__(self) -> None:
        try:
            self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise TargetError(f"cannot open the kernel's process connector: {exc.strerror}") from None
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            self._socket.bind((0, CN_IDX_PROC))  # port id 0: the kernel assigns a unique one
            self._socket.send(_control(PROC_CN_MCAST_LISTEN))
        except OSError as exc:
            self._socket.close()
            hint = " (needs root: CAP_NET_ADMIN)" if exc.errno in (errno.EPERM, errno.EACCES) else ""
            raise TargetError(f"cannot subscribe to process events: {exc.strerror}{hint}") from None

    def __enter__(self) -> ExecEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The socket, for a caller's own select/poll loop."""
        return self._socket.fileno()

    def close(self) -> None:
        """Unsubscribe and close; safe to call twice."""
        if self._socket.fileno() < 0:
            return
        with contextlib.suppress(OSError):  # the kernel drops the subscription with the socket anyway
            self._socket.send(_control(PROC_CN_MCAST_IGNORE))
        self._socket.close()

    def drain(self) -> list[ProcessEvent | Overrun]:
        """Every event already queued, without waiting (for a caller's own select loop)."""
        found: list[ProcessEvent | Overrun] = []
        while True:
            try:
                datagram = self._socket.recv(_RECEIVE_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return found
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    found.append(Overrun())
                    continue
                raise TargetError(f"process connector: {os.strerror(exc.errno or 0)}") from None
            found.extend(parse_events(datagram))

    def events(self, timeout: float | None = None) -> Iterator[ProcessEvent | Overrun]:
        """Events as they arrive; ends after `timeout` seconds without a datagram (None: never)."""
        while True:
            ready, _, _ = select.select([self._socket], [], [], timeout)
            if not ready:
                return
            try:
                datagram = self._socket.recv(_RECEIVE_SIZE)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    yield Overrun()
                    continue
                if exc.errno == errno.EINTR:
                    continue
                raise TargetError(f"process connector: {os.strerror(exc.errno or 0)}") from None
            yield from parse_events(datagram)
