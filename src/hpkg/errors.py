"""One error type per layer; the CLI turns each into `error: …` and its exit code (and, under `--json`,
a document whose `error.code` is the class's `code`: a stable word for scripts, docs/json.md).

Exit codes (documented in README.md):
  0  success
  1  internal error (a bug in hpkg: please report it)
  2  usage error (bad option or argument)
  3  invalid input: a malformed, tampered or wrongly signed package, or an unreadable binary
  4  refused: not hot-patchable, incompatible baseline, or unsafe to apply now
  5  no change: the baseline and the fix do not differ in anything that needs patching
  6  target unavailable: no such process, permission denied, or the target went away
  7  not yet supported: the input is in a format `diff` reads but this command does not handle yet
     (a Windows PE pair: diffed, not yet built)
  130 interrupted (Ctrl-C); a live target is left as it was or fully switched, never stopped
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_REFUSED = 4
EXIT_NO_CHANGE = 5
EXIT_TARGET = 6
EXIT_NOT_YET_SUPPORTED = 7
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT (128 + 2)

# The `error.code` of failures that are no HpkgError (click's usage errors, Ctrl-C, a bug).
CODE_USAGE = "usage"
CODE_INTERRUPTED = "interrupted"
CODE_INTERNAL = "internal"


class HpkgError(Exception):
    """Base of every expected failure; carries the exit code the CLI uses."""

    code: str = "internal"
    exit_code: int = EXIT_INTERNAL


class ImageError(HpkgError):
    """A binary cannot be read as a supported ELF image."""

    code: str = "invalid-binary"
    exit_code = EXIT_INVALID


class DebianPackageError(HpkgError):
    """A .deb cannot be unpacked safely: not a Debian package, or a member that would land outside it."""

    code: str = "invalid-deb"
    exit_code = EXIT_INVALID


class PackageError(HpkgError):
    """A .hpkg file is malformed, truncated, oversized or of an unknown version."""

    code: str = "invalid-package"
    exit_code = EXIT_INVALID


class VerifyError(HpkgError):
    """A package's digests or signature do not hold."""

    code: str = "verification-failed"
    exit_code = EXIT_INVALID


class RefusedError(HpkgError):
    """hpkg declines on purpose: the change, the target or the moment is not safe.

    `reasons` holds one line per offender so that a release engineer sees all of them at once.
    """

    code: str = "refused"
    exit_code = EXIT_REFUSED

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


class UnsupportedChange(RefusedError):
    """The difference between baseline and fix cannot be hot-patched."""

    code: str = "not-hot-patchable"


class IncompatibleTarget(RefusedError):
    """The target is not the baseline the package was built for."""

    code: str = "incompatible-target"


class UnsafeNow(RefusedError):
    """A thread is inside a function being replaced and waiting did not help."""

    code: str = "unsafe-now"


class NoChange(HpkgError):
    """Baseline and fix do not differ in anything that needs patching."""

    code: str = "no-change"
    exit_code = EXIT_NO_CHANGE


class TargetError(HpkgError):
    """The target process or file cannot be reached (gone, permission, ptrace)."""

    code: str = "target-unavailable"
    exit_code = EXIT_TARGET


class NotYetSupported(HpkgError):
    """A package this command does not handle yet: a Windows PE one given to a live apply or install."""

    code: str = "not-yet-supported"
    exit_code = EXIT_NOT_YET_SUPPORTED
