from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from moray.controlplane.store import db
from moray.controlplane.store.cpstore import ControlPlaneStore


class FakeSigner:
    key_id = "test"

    def sign(self, data: bytes) -> bytes:
        return b"sig:" + data[:8]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = db.make_engine(db.database_url(data=tmp_path))
    db.migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine) -> ControlPlaneStore:
    return ControlPlaneStore(engine)


@pytest.fixture
def signer() -> FakeSigner:
    return FakeSigner()
