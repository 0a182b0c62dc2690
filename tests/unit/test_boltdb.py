"""The read-only bolt reader on podman's captured database and on hostile bytes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from moray.agent.enrich.boltdb import BoltError, BoltFile

DB = Path(__file__).parent.parent / "fixtures/runtimes/podman-labels/storage/libpod" \
    / "bolt_state.db"


def test_buckets_and_overflow_values() -> None:
    db = BoltFile.open(str(DB))
    root = db.bucket([])
    assert root is not None and b"ctr" in root and root[b"ctr"] is None  # nested bucket
    names = db.bucket([b"all-ctrs"])
    assert names is not None and set(names.values()) == {b"moray-pod-labels",
                                                         b"moray-pod-member"}
    for cid, name in names.items():
        raw = db.get([b"ctr", cid], b"config")
        assert raw is not None and len(raw) > db.page_size  # spans overflow pages
        assert json.loads(raw)["name"] == name.decode()
    assert db.bucket([b"ctr", b"nope"]) is None
    assert db.get([b"nope"], b"config") is None


@pytest.mark.parametrize("data", [b"", b"\0" * 8192, b"not a database" * 1000])
def test_not_a_database(data: bytes) -> None:
    with pytest.raises(BoltError):
        BoltFile(data)


def test_damaged_pages_raise_bolt_error_only() -> None:
    good = DB.read_bytes()
    rng = random.Random(7)
    for _ in range(300):
        data = bytearray(good)
        page = rng.randrange(2, len(good) // 4096)  # keep the meta pages: damage the tree
        for _ in range(4):
            pos = page * 4096 + rng.randrange(64)  # headers and element tables
            data[pos] = rng.randrange(256)
        try:
            db = BoltFile(bytes(data))
            for cid in (db.bucket([b"ctr"]) or {}):
                db.get([b"ctr", cid], b"config")
        except BoltError:
            pass
