"""Revert under Wine with and without the search of every Windows stack word for package memory.

Revert searches, in its stop, every word of each Windows thread's stack (from its Windows rsp to its
TEB's StackBase) for a pointer into the package memory, to keep that memory mapped rather than unmap
it under a word (loader/revert.py). Its peer, in the same invocation and on the same process, is the
same revert with that search left out (what revert did before: Windows stack words not looked at).
Rounds take turns (apply, one request answered by the fix, revert with the search; then the same with
the peer's revert; the order swapped every round); a revert with the search also frees the retired
memory of the round before when no word points into it any more. The figure is each revert's pause
(every thread stopped, first interrupt to last detach) and its "windows frames" step (the walk, and
the search), medians over the rounds.

    python -m bench.wine_revert [--rounds N] [--prefix DIR]

Wants the PE samples built (`make -C samples/pe`), `wine` and ptrace rights over its children.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PE_SAMPLES = REPO_ROOT / "samples" / "pe"
READY_LINE = re.compile(r"^listening on (\d+)$")
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Target:
    """A PE sample to revert: its directory, a request the fix answers, and whether it is a server."""

    name: str
    request: str
    server: bool


TARGETS = (
    Target("14-threaded-server", "GET /xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", True),
    Target("04-new-helper", "read ../../etc/passwd", False),
)


class Running:
    """A PE sample running under Wine, one request line in and one answer line out."""

    def __init__(self, target: Target, environment: dict[str, str]) -> None:
        binary = PE_SAMPLES / target.name / "out" / "baseline.exe"
        argv = ["wine", str(binary), *(["0"] if target.server else [])]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, **environment})  # fmt: skip
        self.pid = self.process.pid
        self.connection: socket.socket | None = None
        if target.server:
            assert self.process.stdout is not None
            banner = self.process.stdout.readline().strip()
            match = READY_LINE.match(banner)
            if match is None:
                self.close()
                raise RuntimeError(f"{target.name} printed {banner!r}")
            self.connection = socket.create_connection(("127.0.0.1", int(match.group(1))))
            self.replies = self.connection.makefile("r")

    def ask(self, line: str) -> str:
        if self.connection is not None:
            self.connection.sendall((line + "\n").encode())
            return self.replies.readline().strip()
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def words_not_searched() -> Iterator[None]:
    """The peer: revert's stop without the pointer search (no `pointed` list handed to the check), and
    without the retired memory it would free (an earlier round's)."""
    from hpkg.loader import revert

    original, retired = revert.wait_until_safe, revert._retired

    def without(process, replaced, windows, image, timeout, freed=(), pointed=None):  # noqa: ANN001, ANN202
        return original(process, replaced, windows, image, timeout, freed, None)

    revert.wait_until_safe, revert._retired = without, lambda process, found: {}
    try:
        yield
    finally:
        revert.wait_until_safe, revert._retired = original, retired


@dataclass(frozen=True)
class Round:
    pause_ms: float
    frames_ms: float  # the "windows frames" step of the stop
    retained: int


def _one(pid: int, package: object, running: Running, request: str, searched: bool) -> Round:
    from hpkg.loader.apply import apply_to_process
    from hpkg.loader.revert import revert_process

    apply_to_process(package, pid, TIMEOUT_SECONDS)  # type: ignore[arg-type]
    running.ask(request)
    with contextlib.nullcontext() if searched else words_not_searched():
        result = revert_process(pid, timeout=TIMEOUT_SECONDS)
    [image] = result.images
    steps = dict(image.window)
    return Round(image.pause_seconds * 1000, steps.get("windows frames", 0.0) * 1000, len(image.retained))


def measure(target: Target, rounds: int, environment: dict[str, str], workdir: Path) -> dict[str, object]:
    """Interleaved rounds of both reverts on one process of `target`; their medians and ratio."""
    from hpkg.builder.build import build_package
    from hpkg.loader.trust import open_package

    out = PE_SAMPLES / target.name / "out"
    path = workdir / f"{target.name}.hpkg"
    path.write_bytes(build_package(out / "baseline.exe", out / "fixed.exe").blob)
    package = open_package(path, None, allow_unsigned=True).package
    running = Running(target, environment)
    try:
        running.ask("GET /index.html" if target.server else "read docs/a.txt")  # the image is mapped now
        threads = len(os.listdir(f"/proc/{running.pid}/task"))
        results: dict[bool, list[Round]] = {True: [], False: []}
        for number in range(rounds):
            for searched in (True, False) if number % 2 == 0 else (False, True):
                results[searched].append(_one(running.pid, package, running, target.request, searched))
    finally:
        running.close()

    def median(searched: bool, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[searched])

    return {
        "sample": target.name, "threads": threads, "rounds": rounds,
        "pause_ms": median(True, "pause_ms"), "peer_pause_ms": median(False, "pause_ms"),
        "ratio": median(True, "pause_ms") / median(False, "pause_ms"),
        "frames_ms": median(True, "frames_ms"), "peer_frames_ms": median(False, "frames_ms"),
        "retained": sum(r.retained for r in results[True]),
    }  # fmt: skip


def wine_environment(prefix: Path) -> dict[str, str]:
    """WINEPREFIX (created on first use) and no debug channels."""
    environment = {"WINEPREFIX": str(prefix), "WINEDEBUG": "-all"}
    if not (prefix / "system.reg").exists():
        subprocess.run(["wineboot", "--init"], env={**os.environ, **environment}, capture_output=True,
                       check=True)  # fmt: skip
    return environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wine_revert", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds per revert kind (15)")
    parser.add_argument("--prefix", type=Path, default=Path(tempfile.gettempdir()) / "hpkg-bench-wine",
                        help="the Wine prefix (made on first use)")  # fmt: skip
    arguments = parser.parse_args(argv)
    environment = wine_environment(arguments.prefix)
    print("| sample | threads | revert pause, search | without | ratio | windows frames step | without |"
          " reverts that kept memory | rounds |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="hpkg-bench-wine-") as scratch:
        for target in TARGETS:
            r = measure(target, arguments.rounds, environment, Path(scratch))
            print(f"| {r['sample']} | {r['threads']} | {r['pause_ms']:.3f} ms | {r['peer_pause_ms']:.3f} ms |"
                  f" {r['ratio']:.2f}x | {r['frames_ms']:.3f} ms | {r['peer_frames_ms']:.3f} ms |"
                  f" {r['retained']} of {r['rounds']} | {r['rounds']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
