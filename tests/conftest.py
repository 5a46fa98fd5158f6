"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = REPO.parent / "shared" / "data" / "ievnet-samples"


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """The two real IE-Vnet sample crops (evaluation only); skip when ../shared is absent."""
    if not (SHARED_SAMPLES / "vol_ie_R.nii.gz").is_file():
        pytest.skip(f"real sample crops not found in {SHARED_SAMPLES}")
    return SHARED_SAMPLES
