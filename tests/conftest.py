"""Shared fixtures. Unit tests need no server; integration fixtures are in integration/."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data/` next to the checkout: real third-party samples (never committed)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared samples are missing: expected them in {SHARED_DATA}")
    return SHARED_DATA
