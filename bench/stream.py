"""A continuous stream of requests from a few client threads to a line server, with a tally of outcomes.

Each client keeps one connection and sends one request at a time, alternating a short path and one
over the fix's 32-character limit, so an answer shows which code served it. A request that gets an
error instead of an answer (refused connect, reset, closed connection) is counted as failed; the
client then reconnects after RETRY_SECONDS, as a simple well-behaved client would. The server's
address can move (a restarted server may listen on a new port): `new_generation` marks the moment
the old server is gone, `move_to` gives the new port, and `wait_for_generation` waits until every
client has had an answer on a connection opened since.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass

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


class RequestStream:
    """CLIENTS threads sending requests to 127.0.0.1:port until `stop`."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self._lock = threading.Lock()
        self._port = port
        self._generation = 0
        self._answered = self._failed = self._wrong = self._fixed = self._last_number = 0
        self._client_generation = [-1] * clients
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(index,), daemon=True) for index in range(clients)
        ]

    def __enter__(self) -> RequestStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every client and wait for it."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(ANSWER_DEADLINE_SECONDS)

    def tally(self) -> Tally:
        """The counts so far."""
        with self._lock:
            return Tally(self._answered, self._failed, self._wrong, self._fixed, self._last_number)

    def new_generation(self) -> int:
        """Start a new generation: call it once the old server has exited, so that every connection
        opened from now on reaches the new one (or is refused); return its number."""
        with self._lock:
            self._generation += 1
            return self._generation

    def move_to(self, port: int) -> None:
        """Send the clients to a new port (a restarted server may listen on another one)."""
        with self._lock:
            self._port = port

    def wait_for_answers(self, count: int) -> Tally:
        """Wait until `count` more requests were answered; return the tally then."""
        target = self.tally().answered + count
        deadline = time.monotonic() + ANSWER_DEADLINE_SECONDS
        while (now := self.tally()).answered < target:
            if time.monotonic() > deadline:
                raise StreamError(f"only {now.answered - target + count} of {count} requests answered")
            self._stop.wait(0.001)
        return now

    def wait_for_generation(self, generation: int) -> Tally:
        """Wait until every client has had an answer from the server of `generation`."""
        deadline = time.monotonic() + ANSWER_DEADLINE_SECONDS
        while True:
            with self._lock:
                if min(self._client_generation) >= generation:
                    return Tally(self._answered, self._failed, self._wrong, self._fixed, self._last_number)
            if time.monotonic() > deadline:
                raise StreamError("the clients did not reach the restarted server")
            self._stop.wait(0.001)

    def _target(self) -> tuple[int, int]:
        with self._lock:
            return self._port, self._generation

    def _record(self, index: int, generation: int, path: str, answer: str) -> None:
        match = ANSWER.match(answer)
        with self._lock:
            self._answered += 1
            self._client_generation[index] = max(self._client_generation[index], generation)
            if match is None or (match["path"] is not None and match["path"] != path):
                self._wrong += 1
                return
            if match["fixed"] is not None:
                if path != LONG:
                    self._wrong += 1
                self._fixed += 1
            self._last_number = max(self._last_number, int(match["n"]))

    def _client(self, index: int) -> None:
        connection: socket.socket | None = None
        reader = None
        generation = 0
        number = 0
        while not self._stop.is_set():
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
                self._record(index, generation, path, answer.rstrip("\n"))
            except OSError:
                with self._lock:
                    self._failed += 1
                if connection is not None:
                    connection.close()
                connection = reader = None
                self._stop.wait(RETRY_SECONDS)
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
