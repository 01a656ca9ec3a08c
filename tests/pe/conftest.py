"""Fixtures of the PE tests: the mingw-w64 samples built once per run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pe_corpus import build_pe_corpus  # noqa: E402


@pytest.fixture(scope="session")
def pe_corpus() -> None:
    build_pe_corpus()
