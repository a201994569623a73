"""Shared fixtures: where the repository and the shared real data live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    # CI clones the repo beside ../shared; SEQWATCH_SHARED overrides for other layouts.
    return Path(os.environ.get("SEQWATCH_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_dir()
    if not (path / "data").is_dir():
        pytest.skip(f"shared real data not found at {path} (set SEQWATCH_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_data(shared_dir: Path) -> Path:
    return shared_dir / "data"
