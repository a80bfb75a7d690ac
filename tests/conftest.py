"""Shared test fixtures: where ../shared lives (CI clones the repo beside it)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NDPI = SHARED / "data" / "ndpi"
ZEEK_TRACES = SHARED / "data" / "zeek-traces"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not present")
    return SHARED
