"""Which baselines the machine-wide agent patches: ELF. A Windows PE32+ package is not installed.

`apply --pid` and `apply --all` patch a Windows program running under Wine (loader/pe_process.py finds
its PE image by identity). `install` hands a package to the agent, which patches processes as they
start, from the exec events of the ELF image they run and the build-ids of what they map (loader/agent.py);
a Wine process execs Wine's preloader, and its PE image is mapped later by Wine's own loader, at no
event the agent sees. So installing a PE package is refused before anything is stored, with its own
exit code (7), rather than stored for an agent that would never apply it.
"""

from __future__ import annotations

from hpkg.errors import NotYetSupported
from hpkg.formats.model import Package


def require_agent_format(package: Package) -> None:
    """NotYetSupported (exit 7) for installing a package whose baseline is a PE32+ image."""
    if package.target.is_pe:
        raise NotYetSupported(
            f"package {package.identity.package_id} is for a Windows PE32+ baseline: install is not supported"
            " for it (the agent patches processes when they exec an ELF baseline; Wine maps a PE image later,"
            " at no event it watches); `hpkg apply --all` patches every running Wine process of the baseline"
        )
