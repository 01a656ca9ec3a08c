"""Resolving a package's imports against an ELF file: its own PLT/GOT, else a library it already needs.

The binary is a real sample build; the import records are what a package names (name and version).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sample_corpus import load_samples

from hpkg.errors import RefusedError
from hpkg.formats import ImportRecord
from hpkg.loader.file_imports import file_import_resolver

SAMPLE = next(s for s in load_samples() if s.name == "01-bounds-check")


@pytest.fixture(scope="module")
def baseline(corpus: None) -> Path:
    return SAMPLE.binary("baseline", "ready")


def _plt_entry(binary: Path, name: str) -> int:
    """The address objdump labels `name@plt` (independent of hpkg)."""
    out = subprocess.run(["objdump", "-d", "-j", ".plt", "-j", ".plt.sec", str(binary)],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.endswith(f"<{name}@plt>:"):
            return int(line.split()[0], 16)
    raise KeyError(name)


def test_an_import_the_binary_binds_goes_through_its_plt(baseline: Path) -> None:
    record = ImportRecord("fgets", "GLIBC_2.2.5")

    resolved = file_import_resolver(baseline, (record,))[record]

    assert resolved.address == _plt_entry(baseline, "fgets")
    assert resolved.got_slot is not None and not resolved.bound_at_load


def test_a_libc_function_the_binary_never_called_is_bound_at_load(baseline: Path) -> None:
    record = ImportRecord("strncpy", "GLIBC_2.2.5")

    resolved = file_import_resolver(baseline, (record,))[record]

    assert resolved.bound_at_load and resolved.address is None and resolved.got_slot is None


@pytest.mark.parametrize(
    "record", [ImportRecord("hpkg_no_such_function", None), ImportRecord("strncpy", "GLIBC_99.0")]
)
def test_a_symbol_no_needed_library_defines_is_refused(baseline: Path, record: ImportRecord) -> None:
    with pytest.raises(RefusedError) as refused:
        file_import_resolver(baseline, (ImportRecord("strncpy", "GLIBC_2.2.5"), record))

    (reason,) = refused.value.reasons
    assert record.name in reason and "libc.so.6" in reason
