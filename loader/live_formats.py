"""Which baselines the live loader applies to: ELF. A Windows PE32+ package patches files only, for now.

Under Wine a PE image is mapped by a Linux process that ptrace reaches, and `hpkg verify --pid` already
finds it by its identity and checks its sites (loader/pe_process.py); the steps that change it (placement
within ±2 GiB, imports through its IAT, registering package `.pdata` with Wine's unwinder, the switch)
are not built (issue 12, item 4). Refused before anything is read from a process, with its own exit
code (7), never as "no process maps the baseline".
"""

from __future__ import annotations

from hpkg.errors import NotYetSupported
from hpkg.formats.model import Package


def require_live_format(package: Package, what: str) -> None:
    """NotYetSupported (exit 7) for a package whose baseline is a PE32+ image; `what` names the verb."""
    if package.target.is_pe:
        raise NotYetSupported(
            f"package {package.identity.package_id} is for a Windows PE32+ baseline: {what} into running"
            " processes (under Wine) is not supported yet; `hpkg apply --file` writes a patched .exe"
        )
