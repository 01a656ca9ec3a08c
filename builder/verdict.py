"""The hotpatchability verdict: every reason a fix cannot be hot-patched, gathered before anything is written.

After kpatch's kpatch_verify_patchability: offenders are collected, then the build fails once with
all of them. Each reason has a stable code (the first word of its line) that scripts and
`--allow` use. Only reasons whose consequence is bounded and known may be overridden:

  data-value-changed   overridable: running processes keep the value they hold now; the package
                       code uses the baseline's object, so only new processes see the new initializer.
  init-changed         overridable: a constructor or destructor's code changed; in a running process
                       constructors already ran, so the fix's version never runs there.
  unwind-info-missing  overridable: a package function's .eh_frame rules could not be carried in the
                       package's unwind section (no FDE in the fix, an encoding the builder does not
                       relocate), so an exception raised in or passing through it terminates the
                       process; knowing none does (or accepting that), the fix may ship.
  data-offset-inferred overridable: a stripped build without debug files; a reference only changed
                       code makes into .data/.bss resolves to the baseline's object at the same
                       section offset, because both sections have the same size and every object
                       unchanged code uses sits at the same offset in both. An inference, not a proof
                       (a new variable may fill what was padding): only by explicit request.
  every other code     never: applying would corrupt live state or run code against the wrong layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpkg.errors import NoChange, UnsupportedChange

# code → (overridable, what it means); the table `hpkg build --help` and the report are made from.
REASON_CODES: dict[str, tuple[bool, str]] = {
    "data-value-changed": (True, "a global or static variable of both builds changed its initial bytes"),
    "data-size-changed": (False, "a global or static variable of both builds changed its size (layout)"),
    "tls-changed": (False, "thread-local storage changed layout (size, variables added or removed)"),
    "function-too-small": (False, "a changed function is shorter than the 5-byte jump and has no padding"),
    "ifunc-changed": (False, "an IFUNC resolver changed; its choice is already bound in running processes"),
    "init-changed": (True, "a constructor or destructor changed; in running processes it already ran"),
    "init-array-changed": (False, "the set of constructors or destructors (init/fini arrays) changed"),
    "reference-unresolved": (False, "changed code refers to something the package cannot locate"),
    "jump-table-unrecovered": (False, "changed code has a switch table that could not be recovered"),
    "unwind-info-missing": (True, "exceptions may pass through package code without unwind rules"),
    "library-data-unreachable": (
        False, "changed code reaches a shared library's data object in a way no slot can stand in for"
    ),
    "data-offset-inferred": (
        True,
        "without symbols, changed code's data is taken to be the baseline's at the same section offset"
        " (same section size, every object unchanged code uses at the same offset)",
    ),
}
OVERRIDABLE: frozenset[str] = frozenset(code for code, (allowed, _) in REASON_CODES.items() if allowed)


@dataclass(frozen=True)
class Reason:
    """One offender: a stable code, the function or variable it names, and a sentence a person can act on."""

    code: str
    subject: str
    message: str

    @property
    def overridable(self) -> bool:
        return self.code in OVERRIDABLE

    def line(self) -> str:
        return f"{self.code}: {self.message}"

    def refusal_line(self) -> str:
        """The line of a refusal: an overridable one ends with the option that would accept it."""
        return f"{self.line()} (accept with --allow {self.code})" if self.overridable else self.line()


@dataclass(frozen=True)
class Verdict:
    """All reasons found, and the codes the release engineer overrode with `--allow`."""

    reasons: tuple[Reason, ...]
    allowed: tuple[str, ...] = ()

    @property
    def blocking(self) -> tuple[Reason, ...]:
        """The reasons that still refuse the build after the overrides."""
        return tuple(r for r in self.reasons if not (r.overridable and r.code in self.allowed))

    @property
    def overridden(self) -> tuple[Reason, ...]:
        return tuple(r for r in self.reasons if r.overridable and r.code in self.allowed)

    def used_overrides(self) -> tuple[str, ...]:
        """The override codes that actually overrode something, sorted (recorded in the package)."""
        return tuple(sorted({r.code for r in self.overridden}))


def check_allowed(codes: tuple[str, ...]) -> tuple[str, ...]:
    """Validate `--allow` codes: unknown or never-overridable codes are a ValueError naming them."""
    for code in codes:
        if code not in REASON_CODES:
            known = ", ".join(sorted(OVERRIDABLE))
            raise ValueError(f"unknown reason {code!r}; overridable reasons: {known}")
        if code not in OVERRIDABLE:
            raise ValueError(
                f"reason {code!r} cannot be overridden; overridable reasons: {', '.join(sorted(OVERRIDABLE))}"
            )
    return tuple(sorted(set(codes)))


class NothingToPatch(NoChange):
    """NoChange naming the functions left out as line-number-only (the CLI prints them, JSON too)."""

    def __init__(self, message: str, left_out: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.left_out = left_out


def require_patchable(verdict: Verdict, has_content: bool, left_out: tuple[str, ...] = ()) -> None:
    """Raise UnsupportedChange with every blocking reason, or NoChange when there is nothing to patch.

    Exit 5 only means "no change": the functions left out are proven line-number-only (their
    only difference is a `__LINE__` argument, builder/line_numbers.py), and the error names each one.
    """
    blocking = verdict.blocking
    if blocking:
        count = len(blocking)
        raise UnsupportedChange(
            f"not hot-patchable: {count} reason{'s' if count != 1 else ''}",
            tuple(r.refusal_line() for r in blocking),
        )
    if not has_content:
        if left_out:
            raise NothingToPatch(
                f"nothing to patch: only line-number changes ({', '.join(left_out)}); "
                "use --include-line-only to patch them",
                left_out,
            )
        if verdict.overridden:
            raise NoChange("nothing to patch: the only differences are the overridden data changes")
        raise NoChange("nothing to patch: baseline and fix do not differ in code")
