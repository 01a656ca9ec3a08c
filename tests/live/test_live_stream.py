"""A 16-worker server under a continuous stream of requests is patched and reverted live: no request is
lost or answered twice, every answer is the baseline's or the fix's, and the fix holds from the moment
`hpkg apply` returns until `hpkg revert` does."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from live_helpers import assert_running_untraced, hpkg, hpkg_mappings

CLIENTS = 4
ANSWER_DEADLINE = 30.0  # a safety net against a lost request, not a timing assertion
LONG = "/" + "x" * 40  # over the fix's 32-character limit
SHORT = "/ok"
ANSWER = re.compile(r"^(?:200 (?P<path>/\S*)|(?P<long>414) path too long) \(#(?P<n>\d+)\)$")


@dataclass
class Client:
    """One connection sending requests one at a time; every (phase, request, answer) it saw."""

    port: int
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    error: BaseException | None = None

    def run(self, phase: list[str], stop: threading.Event) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_DEADLINE) as conn:
                reader = conn.makefile("r")
                number = 0
                while not stop.is_set():
                    path = LONG if number % 2 else SHORT
                    current = phase[0]  # read before sending: the phase this request certainly belongs to
                    conn.sendall(f"GET {path}\n".encode())
                    self.seen.append((current, path, reader.readline().rstrip("\n")))
                    number += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc


def _wait_for_answers(clients: list[Client], count: int) -> None:
    event = threading.Event()
    while sum(len(c.seen) for c in clients) < count:
        assert all(c.error is None for c in clients), [c.error for c in clients]
        event.wait(0.01)


def test_sixteen_workers_under_a_request_stream(programs, keys, build_package) -> None:
    program = programs["stream_server"]
    package = build_package(program.baseline, program.fixed)
    with subprocess.Popen([program.baseline], stdout=subprocess.PIPE, text=True) as server:
        try:
            port = int(re.match(r"listening on (\d+)", server.stdout.readline()).group(1))
            assert len(list(Path(f"/proc/{server.pid}/task").iterdir())) == 17
            phase = ["baseline"]
            stop = threading.Event()
            clients = [Client(port) for _ in range(CLIENTS)]
            threads = [threading.Thread(target=c.run, args=(phase, stop)) for c in clients]
            for thread in threads:
                thread.start()
            _wait_for_answers(clients, 200)
            phase[0] = "applying"
            applied = hpkg("apply", package, "--pid", server.pid, "--key", keys.public, "--json")
            assert applied.returncode == 0, applied.stderr
            phase[0] = "patched"
            _wait_for_answers(clients, sum(len(c.seen) for c in clients) + 400)
            phase[0] = "reverting"
            reverted = hpkg("revert", "--pid", server.pid)
            assert reverted.returncode == 0, reverted.stderr
            phase[0] = "reverted"
            _wait_for_answers(clients, sum(len(c.seen) for c in clients) + 200)
            stop.set()
            for thread in threads:
                thread.join(ANSWER_DEADLINE)
            assert all(c.error is None for c in clients), [c.error for c in clients]
            assert_running_untraced(server.pid)
            assert hpkg_mappings(server.pid) == []
        finally:
            server.kill()

    numbers = []
    for current, path, answer in (entry for c in clients for entry in c.seen):
        match = ANSWER.match(answer)
        assert match is not None, answer
        numbers.append(int(match["n"]))
        fixed = match["long"] is not None
        assert fixed or match["path"] == path  # a baseline answer echoes the request's own path
        if path == SHORT or current in ("baseline", "reverted"):
            assert not fixed, (current, path, answer)
        elif current == "patched":
            assert fixed, (current, path, answer)
    # Every request counted exactly once: no request lost, none answered twice.
    assert sorted(numbers) == list(range(1, len(numbers) + 1))
    assert {current for c in clients for current, _, _ in c.seen} >= {"baseline", "patched", "reverted"}
