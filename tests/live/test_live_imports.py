"""A fix that calls a libc function the baseline never imports — strspn, an IFUNC whose implementation
glibc picks per CPU — is resolved without calling into the target, and runs live, in a position-
independent executable and in a non-PIE one (load bias 0)."""

from __future__ import annotations

import subprocess

import pytest
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings


@pytest.mark.parametrize("variant", ["new_import", "new_import-nopie"])
def test_fix_calling_an_ifunc_the_baseline_never_imports(variant, programs, keys, build_package) -> None:
    program = programs[variant]
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


@pytest.mark.parametrize("injection", [True, False], ids=["injected", "site-by-site"])
def test_switch_of_sites_over_several_pages(programs, keys, build_package, monkeypatch, injection) -> None:
    """Sites over several pages (forced here) take the injected process_vm_writev, or, when that is
    impossible (a W^X policy or seccomp, forced too), the site-by-site fallback: the same result."""
    from hpkg.loader import switch
    from hpkg.loader.apply import apply_to_process
    from hpkg.loader.revert import revert_process
    from hpkg.loader.trust import open_package

    monkeypatch.setattr(switch, "in_one_page", lambda low, high: False)
    if not injection:
        monkeypatch.setattr(switch, "_injected", lambda *args: False)
    method = switch.ONE_CALL if injection else switch.SITE_BY_SITE
    program = programs["new_import"]
    package = open_package(build_package(program.baseline, program.fixed), keys.public, False).package
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen([program.baseline], **pipes) as target:
        try:
            def ask(word: str) -> str:
                target.stdin.write(word + "\n")
                target.stdin.flush()
                return target.stdout.readline().rstrip("\n")

            # An answer first: Popen returns once exec has closed its pipe, which the kernel does
            # before it maps the new image, so a loaded machine could show the loader no image yet.
            assert ask("a;b") == "ok a;b (#1)"
            applied = apply_to_process(package, target.pid)
            assert applied.images[0].switch == method
            assert ask("a;b") == "rejected a;b (#2)"
            assert revert_process(target.pid).images[0].switch == method
            assert ask("a;b") == "ok a;b (#3)"
            assert_running_untraced(target.pid)
            assert hpkg_mappings(target.pid) == []
        finally:
            target.kill()
