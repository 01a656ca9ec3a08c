"""What the debuginfod tests share: the server handle and a free loopback port."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Server:
    """A running debuginfod: its URL and the build-ids whose debug files it serves."""

    url: str
    build_ids: frozenset[str]


def unused_port() -> int:
    """A loopback port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
