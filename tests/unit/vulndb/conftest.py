from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the repository root, so `controlplane` and `tests.fixtures.images` import without an install
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from moray.controlplane.store.scanstore import ScanStore
from moray.controlplane.vulndb.importer import import_path
from tests.helpers.advisories import ADVISORIES


def advisories_dir() -> Path:
    if ADVISORIES.is_dir():
        return ADVISORIES
    pytest.skip(f"no advisories at {ADVISORIES} (MORAY_ADVISORIES)")


@pytest.fixture(scope="session")
def advisories() -> Path:
    return advisories_dir()


@pytest.fixture
def store(tmp_path: Path) -> ScanStore:
    return ScanStore(tmp_path / "moray.db")


@pytest.fixture(scope="session")
def loaded_store(tmp_path_factory: pytest.TempPathFactory, advisories: Path) -> ScanStore:
    s = ScanStore(tmp_path_factory.mktemp("vulndb") / "moray.db")
    import_path(advisories, s)
    return s
