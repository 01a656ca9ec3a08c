"""A continuous stream of requests from a few client threads (in a process of their own) to a line server,
with a tally of outcomes.

Each client keeps one connection and sends one request at a time, alternating a short path and one
over the fix's 32-character limit, so an answer shows which code served it. A request that gets an
error instead of an answer (refused connect, reset, closed connection) is counted as failed; the
client then reconnects after RETRY_SECONDS, as a simple well-behaved client would. The server's
address can move (a restarted server may listen on a new port): `new_generation` marks the moment
the old server is gone, `move_to` gives the new port, and `wait_for_generation` waits until every
client has had an answer on a connection opened since.
"""

from __future__ import annotations

import multiprocessing
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

RETRY_SECONDS = 0.005
SHORT = "/ok"
LONG = "/" + "x" * 40  # over both servers' 32-character limit: the fix answers 414
ANSWER = re.compile(r"^(?:200 (?P<path>/\S*)|(?P<fixed>414) path too long) \(#(?P<n>\d+)\)$")
# A safety net against a server that stopped answering, not a timing assertion.
ANSWER_DEADLINE_SECONDS = 30.0


class StreamError(Exception):
    """The stream stalled: no client got an answer from the server within the deadline."""


@dataclass(frozen=True)
class Tally:
    """Counts of the whole stream up to one moment."""

    answered: int
    failed: int
    wrong: int  # answered, but neither the baseline's nor the fix's answer to the request sent
    fixed: int  # answers only the fix gives (414 for the long path)
    last_number: int  # the highest request number (#N) the server has reported so far

    def since(self, earlier: Tally) -> Tally:
        """What happened between `earlier` and this tally."""
        return Tally(
            self.answered - earlier.answered,
            self.failed - earlier.failed,
            self.wrong - earlier.wrong,
            self.fixed - earlier.fixed,
            self.last_number,
        )


# The shared words of a stream: its counts, the server's port and generation, the stop flag, and then
# each client's generation.
_ANSWERED, _FAILED, _WRONG, _FIXED, _LAST_NUMBER, _PORT, _GENERATION, _STOP, _CLIENTS = range(9)


class RequestStream:
    """CLIENTS threads sending requests to 127.0.0.1:port until `stop`, in a process of their own.

    Not threads of the bench's process: the bench applies and reverts in its own process, and client
    threads there took the GIL from it at every ctypes call of the stop (each releases it), so the pause
    measured the loader waiting for its own clients — 0.43–0.49 ms of floor against 0.30–0.35 with the
    clients apart (bench/RESULTS.md, issue 15). `hpkg apply` runs apart from a service's clients too.
    The counts are words shared with that process, updated under one lock.
    """

    def __init__(self, port: int, clients: int = 4) -> None:
        context = multiprocessing.get_context("fork")  # the bench holds no thread of its own: forking is safe
        self._lock = context.Lock()
        self._words = context.RawArray("q", _CLIENTS + clients)
        self._words[_PORT] = port
        for index in range(clients):
            self._words[_CLIENTS + index] = -1
        self._clients = clients
        self._process = context.Process(target=_run_clients, args=(self._words, self._lock, clients),
                                        name="request-stream", daemon=True)  # fmt: skip

    def __enter__(self) -> RequestStream:
        self._process.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every client and wait for their process."""
        self._words[_STOP] = 1
        if self._process.pid is None:
            return
        self._process.join(ANSWER_DEADLINE_SECONDS)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def tally(self) -> Tally:
        """The counts so far."""
        with self._lock:
            return self._counts()

    def new_generation(self) -> int:
        """Start a new generation: call it once the old server has exited, so that every connection
        opened from now on reaches the new one (or is refused); return its number."""
        with self._lock:
            self._words[_GENERATION] += 1
            return self._words[_GENERATION]

    def move_to(self, port: int) -> None:
        """Send the clients to a new port (a restarted server may listen on another one)."""
        with self._lock:
            self._words[_PORT] = port

    def wait_for_answers(self, count: int) -> Tally:
        """Wait until `count` more requests were answered; return the tally then."""
        target = self.tally().answered + count
        deadline = time.monotonic() + ANSWER_DEADLINE_SECONDS
        while (now := self.tally()).answered < target:
            self._check_alive()
            if time.monotonic() > deadline:
                raise StreamError(f"only {now.answered - target + count} of {count} requests answered")
            time.sleep(0.001)
        return now

    def wait_for_generation(self, generation: int) -> Tally:
        """Wait until every client has had an answer from the server of `generation`."""
        deadline = time.monotonic() + ANSWER_DEADLINE_SECONDS
        while True:
            with self._lock:
                if min(self._words[_CLIENTS : _CLIENTS + self._clients]) >= generation:
                    return self._counts()
            self._check_alive()
            if time.monotonic() > deadline:
                raise StreamError("the clients did not reach the restarted server")
            time.sleep(0.001)

    def _counts(self) -> Tally:
        """The counts, read by a caller holding the lock."""
        words = self._words
        return Tally(words[_ANSWERED], words[_FAILED], words[_WRONG], words[_FIXED], words[_LAST_NUMBER])

    def _check_alive(self) -> None:
        if not self._process.is_alive():
            raise StreamError(f"the clients' process ended (exit status {self._process.exitcode})")


def _run_clients(words: Any, lock: Any, clients: int) -> None:
    """The clients' process: `clients` threads until the stop word is set."""
    runs = [_Client(words, lock, index).run for index in range(clients)]
    threads = [threading.Thread(target=run, daemon=True) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass
class _Client:
    """One client: one connection, one request at a time, its outcomes counted in the shared words."""

    words: Any
    lock: Any
    index: int

    def _target(self) -> tuple[int, int]:
        with self.lock:
            return self.words[_PORT], self.words[_GENERATION]

    def _record(self, generation: int, path: str, answer: str) -> None:
        match = ANSWER.match(answer)
        words = self.words
        with self.lock:
            words[_ANSWERED] += 1
            slot = _CLIENTS + self.index
            words[slot] = max(words[slot], generation)
            if match is None or (match["path"] is not None and match["path"] != path):
                words[_WRONG] += 1
                return
            if match["fixed"] is not None:
                if path != LONG:
                    words[_WRONG] += 1
                words[_FIXED] += 1
            words[_LAST_NUMBER] = max(words[_LAST_NUMBER], int(match["n"]))

    def run(self) -> None:
        connection: socket.socket | None = None
        reader = None
        generation = 0
        number = 0
        while not self.words[_STOP]:
            path = LONG if number % 2 else SHORT
            number += 1
            try:
                if connection is None:
                    port, generation = self._target()
                    address = ("127.0.0.1", port)
                    connection = socket.create_connection(address, timeout=ANSWER_DEADLINE_SECONDS)
                    reader = connection.makefile("r", encoding="ascii", errors="replace")
                assert reader is not None
                connection.sendall(f"GET {path}\n".encode())
                answer = reader.readline()
                if not answer:
                    raise ConnectionResetError("the server closed the connection")
                self._record(generation, path, answer.rstrip("\n"))
            except OSError:
                with self.lock:
                    self.words[_FAILED] += 1
                if connection is not None:
                    connection.close()
                connection = reader = None
                time.sleep(RETRY_SECONDS)
        if connection is not None:
            connection.close()


def ask(port: int, request: str = "GET /probe") -> str | None:
    """One request on a fresh connection; its answer, or None when the server does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_DEADLINE_SECONDS) as connection:
            connection.sendall(f"{request}\n".encode())
            answer = connection.makefile("r", encoding="ascii", errors="replace").readline()
    except OSError:
        return None
    return answer.rstrip("\n") or None
