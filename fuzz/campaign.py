"""One fuzz campaign: generate input N from (seed, N), run it in a forked child, count, minimise crashes.

Regression cases go to tests/fuzz/cases.json, one per crash class, keyed by the class: the target
command, the sample, and the recipe (byte changes of a compiled sample, or edits of a package built
from one) that tests/fuzz/test_fuzz_regressions.py replays.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzz import corpus
from fuzz.elf_mutations import Layout, mutate_elf
from fuzz.minimise import apply_elf_changes, ddmin, elf_changes
from fuzz.outcome import Outcome, classify
from fuzz.package_mutations import Edit, Unpacked, random_edits, repack
from fuzz.state import CrashClass, State
from fuzz.worker import Limits, RawOutcome, preload, run_cli

CASES_FILE = corpus.REPO_ROOT / "tests" / "fuzz" / "cases.json"
SAVE_EVERY_SECONDS = 10.0
MINIMISE_BUDGET = 200
# Inputs that run into the wall-clock or CPU limit cost a minute each: a few tries only.
SLOW_CLASSES, SLOW_BUDGET = ("timeout", "cpu-limit"), 6


@dataclass(frozen=True)
class Input:
    """One generated input: where it goes, what it was made from, and how."""

    index: int
    target: str
    seed: corpus.ElfSeed
    mutant: bytes
    how: str  # the mutators, or the package edits as JSON
    edits: tuple[Edit, ...] = ()  # package inputs only


class Campaign:
    """The seeds, the scratch directory and the state of one run of `python -m fuzz`."""

    def __init__(self, seed: int, state_path: Path, limits: Limits, log: Callable[[str], None],
                 cases_path: Path = CASES_FILE, first_input: int = 0) -> None:  # fmt: skip
        self.state_path = state_path
        self.cases_path = cases_path
        self.state = State.load(state_path, seed, first_input)
        self.limits = limits
        self.log = log
        corpus.build_samples()
        preload()
        scratch_root = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.workdir = Path(tempfile.mkdtemp(prefix="hpkg-fuzz-", dir=scratch_root))
        self.private_key, self.public_key = corpus.write_keys(self.workdir)
        self.elf_seeds = corpus.elf_seeds()
        self.elf_bytes = {s.name: (s.baseline.read_bytes(), s.fixed.read_bytes()) for s in self.elf_seeds}
        self.layouts = {name: (Layout.of(b), Layout.of(f)) for name, (b, f) in self.elf_bytes.items()}
        self.packages = self._build_packages()
        self.stop_requested = False  # set by a signal handler: the loop ends after the current input

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _build_packages(self) -> list[tuple[corpus.ElfSeed, Unpacked]]:
        built = []
        for sample in corpus.PACKAGE_SEEDS:
            seed = corpus.package_seed(sample)
            path = self.workdir / f"{sample}.hpkg"
            argv = ["build", str(seed.baseline), str(seed.fixed), "-o", str(path)]
            raw = run_cli([*argv, "--key", str(self.private_key)], self.workdir, self.limits)
            if raw.exit_code != 0:
                raise RuntimeError(f"cannot build the seed package of {sample}: {raw.stderr.strip()}")
            built.append((seed, Unpacked.of(path.read_bytes())))
        return built

    # -- inputs ---------------------------------------------------------------------------------------

    def make_input(self, index: int) -> Input:
        rng = random.Random(f"{self.state.seed}:{index}")
        targets = list(corpus.TARGET_WEIGHTS)
        target = rng.choices(targets, weights=[corpus.TARGET_WEIGHTS[t] for t in targets])[0]
        if target == "apply-elf":  # a real package, applied to a mutant of its own baseline file
            seed = rng.choice(self.packages)[0]
            mutant, how = mutate_elf(self.elf_bytes[seed.name][0], self.layouts[seed.name][0], rng)
            return Input(index, target, seed, mutant, how)
        if target in corpus.ELF_TARGETS:
            seed = rng.choice(self.elf_seeds)
            side = 1 if target == "diff-new" else 0
            mutant, how = mutate_elf(self.elf_bytes[seed.name][side], self.layouts[seed.name][side], rng)
            return Input(index, target, seed, mutant, how)
        seed, unpacked = rng.choice(self.packages)
        edits = random_edits(unpacked, rng)
        return Input(index, target, seed, repack(unpacked, edits, corpus.test_key()), json.dumps(edits),
                     tuple(edits))  # fmt: skip

    def argv(self, target: str, seed: corpus.ElfSeed, mutant: Path) -> list[str]:
        out = str(self.workdir / "out")
        return argv_for(target, seed, mutant, out, self.public_key, self.workdir / f"{seed.sample}.hpkg")

    def run(self, target: str, seed: corpus.ElfSeed, mutant: bytes) -> tuple[RawOutcome, Outcome]:
        path = self.workdir / ("mutant.hpkg" if target in corpus.PACKAGE_TARGETS else "mutant")
        path.write_bytes(mutant)
        (self.workdir / "out").unlink(missing_ok=True)
        raw = run_cli(self.argv(target, seed, path), self.workdir, self.limits)
        return raw, classify(raw)

    def crash_of(self, target: str, seed: corpus.ElfSeed, mutant: bytes) -> str | None:
        return self.run(target, seed, mutant)[1].crash

    # -- the loop -----------------------------------------------------------------------------------------

    def fuzz(self, inputs: int, seconds: float) -> None:
        """Run until `inputs` more inputs are done or `seconds` have passed; save as it goes."""
        state = self.state
        state.sessions += 1
        started = last_save = time.monotonic()
        stop_at = state.next_input + inputs
        try:
            while state.next_input < stop_at and time.monotonic() - started < seconds:
                if self.stop_requested:
                    break
                item = self.make_input(state.next_input)
                raw, outcome = self.run(item.target, item.seed, item.mutant)
                if self.stop_requested and outcome.ended in ("signal SIGTERM", "signal SIGINT"):
                    break  # `pkill -f` or a terminal's Ctrl-C reached the child too: run it again next time
                state.count(item.index, item.target, outcome.ended, raw.seconds, raw.max_rss_kib)
                if outcome.crash is not None:
                    self._crash(item, outcome)
                state.next_input += 1
                now = time.monotonic()
                if now - last_save > SAVE_EVERY_SECONDS:
                    state.seconds += now - last_save
                    last_save = now
                    state.save(self.state_path)
                    self.log(progress_line(state))
        finally:
            state.seconds += time.monotonic() - last_save
            state.save(self.state_path)
        self.log(progress_line(state))

    def _crash(self, item: Input, outcome: Outcome) -> None:
        assert outcome.crash is not None
        known = self.state.classes.get(outcome.crash)
        if known is not None:
            known.count += 1
            return
        self.log(f"new crash class at input {item.index} ({item.target}, {item.seed.name}): {outcome.crash}")
        self.log(f"  {outcome.detail}")
        found = CrashClass(1, item.index, item.target, item.seed.name, outcome.detail)
        self.state.classes[outcome.crash] = found
        found.reproducer = self.minimise(item, outcome.crash)
        write_case(self.cases_path, outcome.crash, found)
        self.state.save(self.state_path)

    def minimise(self, item: Input, crash: str) -> dict[str, Any]:
        """The smallest recipe that still shows `crash`, as a regression case records it."""
        import lief

        version = lief.__version__.split("-")[0]
        budget = SLOW_BUDGET if crash in SLOW_CLASSES else MINIMISE_BUDGET
        case: dict[str, Any] = {"target": item.target, "sample": item.seed.sample, "lief": version}
        if item.target in corpus.ELF_TARGETS:
            side = 1 if item.target == "diff-new" else 0
            original = self.elf_bytes[item.seed.name][side]
            path = item.seed.fixed if side else item.seed.baseline

            def still_elf(changes: list) -> bool:
                return self.crash_of(item.target, item.seed, apply_elf_changes(original, changes)) == crash

            changes = ddmin(elf_changes(original, item.mutant), still_elf, budget)
            file = path.relative_to(corpus.SAMPLES_DIR / item.seed.sample)
            case.update(file=str(file), changes=[list(c) for c in changes])
        else:
            unpacked = next(u for s, u in self.packages if s == item.seed)
            key = corpus.test_key()

            def still_package(edits: list[Edit]) -> bool:
                return self.crash_of(item.target, item.seed, repack(unpacked, edits, key)) == crash

            case.update(edits=ddmin(list(item.edits), still_package, budget))
        self.log(f"  minimised to {len(case.get('changes', case.get('edits', [])))} change(s)")
        return case


def argv_for(target: str, seed: corpus.ElfSeed, mutant: Path, out: str, public_key: Path,
             package: Path) -> list[str]:  # fmt: skip
    """The command line of `target` with the mutant in its mutated place (`package`: the seed's own)."""
    baseline, fixed, key = str(seed.baseline), str(seed.fixed), str(public_key)
    return {
        "diff-old": ["diff", str(mutant), fixed],
        "diff-new": ["diff", baseline, str(mutant)],
        "build": ["build", str(mutant), fixed, "-o", out],
        "inspect": ["inspect", str(mutant)],
        "verify": ["verify", str(mutant), "--key", key],
        "verify-file": ["verify", str(mutant), "--key", key, "--against", baseline],
        "apply-file": ["apply", str(mutant), "--file", baseline, "-o", out, "--key", key],
        "apply-elf": ["apply", str(package), "--file", str(mutant), "-o", out, "--key", key],
    }[target]


def write_case(path: Path, crash: str, found: CrashClass) -> None:
    """Add the regression case of a new crash class to the cases file (tests/fuzz/cases.json)."""
    cases = read_cases(path)
    if any(c["class"] == crash for c in cases):
        return  # known from an earlier campaign: its case stays as it was written
    cases.append({"class": crash, "detail": found.detail, **(found.reproducer or {})})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_cases(cases))


def read_cases(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["cases"] if path.exists() else []


def format_cases(cases: list[dict[str, Any]]) -> str:
    """One case per line, sorted by class: short diffs when a campaign adds one."""
    lines = ",\n".join("  " + json.dumps(c, sort_keys=True) for c in sorted(cases, key=lambda c: c["class"]))
    return '{"cases": [\n' + lines + "\n]}\n"


def progress_line(state: State) -> str:
    rate = state.inputs_run / state.seconds if state.seconds else 0.0
    return (f"{state.next_input} inputs, {rate:.1f}/s, {len(state.classes)} crash classes, "
            f"endings {dict(sorted(state.by_ending.items()))}")  # fmt: skip
