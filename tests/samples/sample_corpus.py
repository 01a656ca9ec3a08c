"""The samples corpus as data: each sample's spec (sample.toml), its built files, and a conversation.

Later end-to-end tests reuse this module: load_samples() gives every Sample, build_corpus() builds
them once (safe under pytest-xdist), and Conversation drives a running baseline or fix one request
at a time, so a test can patch the process between two requests.  The schema is in samples/README.md.
"""

from __future__ import annotations

import fcntl
import os
import re
import selectors
import socket
import subprocess
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"
BUILDS = ("baseline", "fixed")
FLAVOURS = ("ready", "stripped", "plain")
KINDS = ("stdio", "server", "library-host")
VERDICTS = ("patchable", "refused")
# A safety net against a hung sample, not a timing assertion: far above any real answer time.
ANSWER_DEADLINE_SECONDS = 30.0

_EXPECTATION_KEYS = {
    "verdict": "verdict",
    "refusal_reason": "refusal_reason",
    "expected_changed": "changed",
    "expected_added": "added",
    "expected_removed": "removed",
    "expected_data_changes": "data_changed",
    "expected_data_added": "data_added",
    "expected_data_removed": "data_removed",
}


@dataclass(frozen=True)
class Step:
    """One request and the answer each build gives to it in a fresh process fed every step in order."""

    request: str
    baseline: str
    fixed: str
    live: str | None = None


@dataclass(frozen=True)
class Expectation:
    """What a diff and a package build must say about one flavour of a sample."""

    verdict: str
    refusal_reason: tuple[str, ...]
    changed: frozenset[str]
    added: frozenset[str]
    removed: frozenset[str]
    data_changed: frozenset[str]
    data_added: frozenset[str]
    data_removed: frozenset[str]


@dataclass(frozen=True)
class Launch:
    """How to start a sample's process: the command line and the environment additions."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One sample pair: where it lives, how to drive it, and what hpkg must make of it."""

    name: str
    directory: Path
    summary: str
    cwe: str
    kind: str
    language: str
    flavours: tuple[str, ...]
    expectations: Mapping[str, Expectation]
    steps: tuple[Step, ...]
    patch_after: int | None
    revert_after: int | None
    library_file: str | None = None
    host: str | None = None
    server_args: tuple[str, ...] = ()
    ready_pattern: str | None = None
    workers: int | None = None

    @property
    def out(self) -> Path:
        return self.directory / "out"

    def _build_name(self, build: str, flavour: str) -> str:
        return {"ready": build, "stripped": f"{build}.stripped", "plain": f"{build}.plain"}[flavour]

    def binary(self, build: str, flavour: str) -> Path:
        """The ELF file hpkg diffs and patches: the program, or the library of a library-host sample."""
        name = self._build_name(build, flavour)
        if self.kind == "library-host":
            return self.out / name / str(self.library_file)
        return self.out / name

    def symbols_twin(self, build: str, flavour: str) -> Path:
        """The same code with its symbols: the distribution link before `strip` for the stripped flavour."""
        if flavour != "stripped":
            return self.binary(build, flavour)
        if self.kind == "library-host":
            return self.out / f"{build}.unstripped" / str(self.library_file)
        return self.out / f"{build}.unstripped"

    def host_binary(self, flavour: str) -> Path:
        """The host program of a library-host sample (one per flavour, the same for both builds)."""
        suffix = "" if flavour == "ready" else f".{flavour}"
        return self.out / f"{self.host}{suffix}"

    def launch(self, build: str, flavour: str) -> Launch:
        """The command that starts this build as a process a test can talk to."""
        if self.kind == "library-host":
            library_dir = self.binary(build, flavour).parent
            return Launch((str(self.host_binary(flavour)),), {"LD_LIBRARY_PATH": str(library_dir)})
        return Launch((str(self.binary(build, flavour)), *self.server_args))

    def answers(self, build: str) -> list[str]:
        """Every step's answer from a fresh process of one build."""
        return [getattr(step, build) for step in self.steps]

    def live_answers(self) -> list[str]:
        """The answers of the live scenario: baseline, apply after patch_after, revert after revert_after."""
        if self.patch_after is None or self.revert_after is None:
            raise ValueError(f"{self.name} has no live scenario")
        answers = []
        for number, step in enumerate(self.steps, start=1):
            patched = self.patch_after < number <= self.revert_after
            answers.append(step.live if step.live is not None else (step.fixed if patched else step.baseline))
        return answers


def _expectation(table: Mapping[str, object], base: Expectation | None) -> Expectation:
    values: dict[str, object] = {}
    for key, attribute in _EXPECTATION_KEYS.items():
        if key in table:
            raw = table[key]
            if key == "verdict":
                values[attribute] = raw
            else:
                values[attribute] = tuple(raw) if key == "refusal_reason" else frozenset(raw)
        elif base is not None:
            values[attribute] = getattr(base, attribute)
        else:
            raise ValueError(f"missing {key}")
    return Expectation(**values)  # type: ignore[arg-type]


def load_sample(directory: Path) -> Sample:
    """Read one sample's sample.toml."""
    spec = tomllib.loads((directory / "sample.toml").read_text())
    ready = _expectation(spec, None)
    expectations = {"ready": ready}
    for flavour in spec["flavours"]:
        if flavour != "ready":
            expectations[flavour] = _expectation(spec.get("flavour", {}).get(flavour, {}), ready)
    live = spec.get("live", {})
    library = spec.get("library", {})
    server = spec.get("server", {})
    return Sample(
        name=spec["name"],
        directory=directory,
        summary=spec["summary"],
        cwe=spec["cwe"],
        kind=spec["kind"],
        language=spec["language"],
        flavours=tuple(spec["flavours"]),
        expectations=expectations,
        steps=tuple(Step(**step) for step in spec["steps"]),
        patch_after=live.get("patch_after"),
        revert_after=live.get("revert_after"),
        library_file=library.get("file"),
        host=library.get("host"),
        server_args=tuple(server.get("args", ())),
        ready_pattern=server.get("ready_pattern"),
        workers=server.get("workers"),
    )


def load_samples(samples_dir: Path = SAMPLES_DIR) -> list[Sample]:
    """Every sample of the corpus, in directory order."""
    return [load_sample(d) for d in sorted(samples_dir.glob("[0-9][0-9]-*")) if (d / "sample.toml").is_file()]


def build_corpus(samples_dir: Path = SAMPLES_DIR, jobs: int = 2) -> None:
    """Build every sample with `make`, one builder at a time across processes (pytest-xdist workers)."""
    lock_path = samples_dir / "out" / "build.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["make", "-C", str(samples_dir), f"-j{jobs}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the samples failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")


class Conversation:
    """A running sample: send one request, read its one answer line; the process stays up in between."""

    def __init__(self, sample: Sample, build: str, flavour: str) -> None:
        launch = sample.launch(build, flavour)
        self.sample = sample
        self.process = subprocess.Popen(
            launch.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **launch.env},
        )
        self._pending = b""
        self._socket: socket.socket | None = None
        if sample.kind == "server":
            banner = self._read_line(self.process.stdout.fileno())  # type: ignore[union-attr]
            match = re.match(str(sample.ready_pattern), banner)
            if match is None:
                self.close()
                raise RuntimeError(f"{sample.name}: unexpected banner {banner!r}")
            self.port = int(match.group(1))
            self._socket = socket.create_connection(("127.0.0.1", self.port))
            self._pending = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_line(self, fd: int) -> str:
        deadline = time.monotonic() + ANSWER_DEADLINE_SECONDS
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{self.sample.name}: no answer line from pid {self.process.pid}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError(f"{self.sample.name}: pid {self.process.pid} closed its output")
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def ask(self, request: str) -> str:
        """Send one request line and return the answer line (without its newline)."""
        data = (request + "\n").encode()
        if self._socket is not None:
            self._socket.sendall(data)
            return self._read_line(self._socket.fileno())
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()
        return self._read_line(self.process.stdout.fileno())

    def close(self) -> int | None:
        """End the conversation: EOF for a stdio sample (it exits 0), SIGTERM for a server."""
        if self._socket is not None:
            self._socket.close()
        if self.sample.kind == "server" or self.process.stdin is None:
            self.process.terminate()
        else:
            self.process.stdin.close()
        try:
            return self.process.wait(timeout=ANSWER_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None
        finally:
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
