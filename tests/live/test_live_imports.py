"""A fix that calls a libc function the baseline never imports — strspn, an IFUNC whose implementation
glibc picks per CPU — is resolved without calling into the target, and runs live."""

from __future__ import annotations

import subprocess

from live_helpers import assert_running_untraced, hpkg, hpkg_mappings


def test_fix_calling_an_ifunc_the_baseline_never_imports(programs, keys, build_package) -> None:
    program = programs["new_import"]
    package = build_package(program.baseline, program.fixed)
    imports = subprocess.run(["nm", "-D", "--undefined-only", str(program.baseline)], capture_output=True,
                             text=True, check=True).stdout
    assert "strspn" not in imports  # the baseline has no PLT entry or GOT slot to borrow
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen([program.baseline], **pipes) as target:
        try:
            def ask(word: str) -> str:
                target.stdin.write(word + "\n")
                target.stdin.flush()
                return target.stdout.readline().rstrip("\n")

            assert ask("abc") == "ok abc (#1)"
            assert ask("a;b") == "ok a;b (#2)"
            run = hpkg("apply", package, "--pid", target.pid, "--key", keys.public)
            assert run.returncode == 0, run.stderr
            assert ask("abc") == "ok abc (#3)"
            assert ask("a;b") == "rejected a;b (#4)"
            assert ask("rm -rf /") == "rejected rm -rf / (#5)"
            assert hpkg("revert", "--pid", target.pid).returncode == 0
            assert ask("a;b") == "ok a;b (#6)"
            assert_running_untraced(target.pid)
            assert hpkg_mappings(target.pid) == []
        finally:
            target.kill()
