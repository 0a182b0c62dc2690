"""The scanner's store on migrations: job de-duplication, leases, give-back, exhausted
jobs, stale rescans, registered registries and images, and adoption of the tables that
ScanStore created itself before revision 0002. Re-run against PostgreSQL by
tests/integration/test_server_store_pg.py."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from sqlalchemy import Engine

from moray.controlplane.store import db
from moray.controlplane.store.scanstore import ScanStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_active_job_per_key_and_leases(engine: Engine) -> None:
    clock = Clock()
    s = ScanStore(engine, clock=clock)
    a = s.enqueue_scan("r/app:1", "P")
    assert s.enqueue_scan("r/app:1", "P") == a                 # queued: same job
    b = s.enqueue_scan("r/app:1", "Q")                         # another policy: another job
    c = s.enqueue_scan("r/app:1", "P", insecure=True)          # other registry options too
    assert len({a, b, c}) == 3
    job = s.claim_scan("w1", lease_seconds=10)
    assert job is not None and job.id == a and job.attempts == 1
    assert s.enqueue_scan("r/app:1", "P") == a                 # leased: still the same job
    assert s.extend_scan(a, "w1", 100) and not s.extend_scan(a, "w2", 100)
    clock.now += 50
    assert [j.id for j in (s.claim_scan("w2"), s.claim_scan("w2"))] == [b, c]
    assert s.claim_scan("w2") is None                          # a's lease was extended
    assert s.release_scan(a, "w1")                             # given back on shutdown
    again = s.claim_scan("w2")
    assert again is not None and again.id == a and again.attempts == 1
    assert s.finish_scan(a, "w2", digest="sha256:d")
    assert s.enqueue_scan("r/app:1", "P") not in (a, b, c)     # done: a new job


def test_exhausted_lease_fails_the_job(engine: Engine) -> None:
    clock = Clock()
    s = ScanStore(engine, clock=clock)
    job_id = s.enqueue_scan("r/crashy:1")
    for n in range(3):
        job = s.claim_scan(f"w{n}", lease_seconds=5, max_attempts=3)
        assert job is not None and job.attempts == n + 1
        clock.now += 6                                         # the worker died
    assert s.claim_scan("w9", max_attempts=3) is None
    (row,) = s.jobs()
    assert (row["id"], row["status"]) == (job_id, "failed") and "expired" in row["error"]
    assert s.enqueue_scan("r/crashy:1") != job_id              # not blocking the image


def test_parallel_claims_take_each_job_once(engine: Engine) -> None:
    stores = [ScanStore(engine) for _ in range(4)]
    ids = {stores[0].enqueue_scan(f"r/app:{i}") for i in range(40)}
    taken: list[int] = []
    lock = threading.Lock()

    def work(s: ScanStore, name: str) -> None:
        while (job := s.claim_scan(name)) is not None:
            with lock:
                taken.append(job.id)
            s.finish_scan(job.id, name, digest="d")

    threads = [threading.Thread(target=work, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == sorted(ids)


def test_stale_rescans_are_tried_once_per_generation(engine: Engine) -> None:
    s = ScanStore(engine)
    s.enqueue_scan("r/app:1", "P", insecure=True, credentials="env:REG")
    job = s.claim_scan("w")
    assert job is not None
    s.record_verdict("sha256:a", "r/app:1", "p", True, [])
    assert s.finish_scan(job.id, "w", digest="sha256:a")
    assert s.enqueue_stale() == 0
    s.record_import("adv/", 3, 3, 0)
    assert s.enqueue_stale() == 1 and s.enqueue_stale() == 0   # queued: not doubled
    again = s.claim_scan("w")
    assert again is not None and (again.policy, again.insecure, again.credentials) == (
        "P", True, "env:REG")
    # the worker matched against generation 0 (read before the import): still stale, but
    # this generation has been tried; a failed rescan is not retried in a loop either
    s.record_verdict("sha256:a", "r/app:1", "p", True, [], generation=0)
    assert s.finish_scan(again.id, "w", error="registry gone")
    assert s.enqueue_stale() == 0
    s.record_import("adv2/", 1, 1, 0)
    assert s.enqueue_stale() == 1


def test_registered_registries_and_images(engine: Engine) -> None:
    clock = Clock()
    s = ScanStore(engine, clock=clock)
    reg = s.add_registry("127.0.0.1:5000", repositories=["b", "a", "a"], credentials="env:R",
                         insecure=True, interval_seconds=60, policy="P")
    img = s.add_image("127.0.0.1:5000/c:1", interval_seconds=30)
    assert reg.repositories == ["a", "b"] and reg.next_run == clock.now
    assert [r.id for r in s.due_registries()] == [reg.id]
    assert s.claim_due("scan_registry", reg.id, reg.next_run, reg.interval_seconds)
    assert not s.claim_due("scan_registry", reg.id, reg.next_run, reg.interval_seconds)
    assert s.due_registries() == []
    s.registry_listed(reg.id, 2, "")
    listed = s.registry(reg.id)
    assert listed is not None and listed.last_images == 2 and listed.last_run == clock.now
    assert [i.image for i in s.due_images()] == [img.image]
    assert s.claim_due("scan_image", img.id, img.next_run, img.interval_seconds)
    clock.now += 31
    assert [i.id for i in s.due_images()] == [img.id] and s.due_registries() == []
    assert s.run_registry_now(reg.id) and [r.id for r in s.due_registries()] == [reg.id]
    assert s.registries()[0].as_dict()["has_policy"] is True
    assert s.remove_registry(reg.id) and not s.remove_registry(reg.id)
    assert s.remove_image(img.id) and s.images() == []


LEGACY_SCHEMA = """
CREATE TABLE scanstore_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE scan_job (
    id INTEGER PRIMARY KEY AUTOINCREMENT, image TEXT NOT NULL, policy TEXT NOT NULL,
    status TEXT NOT NULL, worker TEXT NOT NULL DEFAULT '', lease_until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, digest TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX scan_job_status ON scan_job (status, lease_until);
CREATE TABLE image_verdict (
    image_digest TEXT NOT NULL, policy TEXT NOT NULL, passed INTEGER NOT NULL,
    reasons TEXT NOT NULL, vulndb_generation INTEGER NOT NULL, image TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (image_digest, policy)
);
INSERT INTO scanstore_meta VALUES ('vulndb_generation', '4');
INSERT INTO scan_job (image, policy, status, created, updated) VALUES ('a:1', '', 'queued', 1, 1);
INSERT INTO scan_job (image, policy, status, created, updated) VALUES ('b:1', '', 'queued', 1, 1);
INSERT INTO image_verdict VALUES ('sha256:a', 'p', 1, '[]', 4, 'a:1', 1);
"""


def test_tables_made_before_migrations_are_adopted(tmp_path: Path) -> None:
    path = tmp_path / "moray.db"
    con = sqlite3.connect(path)
    con.executescript(LEGACY_SCHEMA)
    con.close()
    s = ScanStore(path)
    assert db.current_revision(s._engine) == db.HEAD
    assert s.generation() == 4 and s.verdicts("sha256:a")[0].passed
    job = s.claim_scan("w")
    assert job is not None and job.image == "a:1"
    assert s.enqueue_scan("c:1") == 3 and s.add_registry("r").id == 1
    s.close()
