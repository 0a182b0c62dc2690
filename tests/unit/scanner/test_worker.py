"""Scan jobs: leased once, parallel workers, failures, rescans after a vulndb import."""

from __future__ import annotations

import threading
from pathlib import Path

from moray.controlplane.scanner.engine.model import ScanResult
from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.scanner.engine.source import open_source
from moray.controlplane.scanner.service.worker import run_worker
from moray.controlplane.store.scanstore import ScanJob, ScanStore
from tests.fixtures.images.builder import Image

POLICY = ("apiVersion: moray/v1\nkind: ImageAssurancePolicy\nmetadata: {name: p}\n"
          "spec: {notRoot: true}\n")


def _images(tmp_path: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.tar"
        Image([{f"f{i}": b"x"}], config={"User": "app" if i % 2 else ""}).write_docker_archive(p)
        paths.append(str(p))
    return paths


def _scan(job: ScanJob) -> ScanResult:
    return scan_image(open_source(Path(job.image)), ScanOptions())


def test_parallel_workers_take_each_job_once(tmp_path: Path) -> None:
    db = tmp_path / "moray.db"
    images = _images(tmp_path, 12)
    setup = ScanStore(db)
    ids = {setup.enqueue_scan(i, POLICY) for i in images}
    assert len(ids) == 12 and setup.enqueue_scan(images[0], POLICY) in ids  # deduplicated
    seen: list[str] = []
    lock = threading.Lock()

    def scan(job: ScanJob) -> ScanResult:
        with lock:
            seen.append(job.image)
        return _scan(job)

    stats = []

    def worker(n: int) -> None:
        store = ScanStore(db)  # one connection per worker, as separate processes would have
        stats.append(run_worker(store, scan, name=f"w{n}", verdicts=store, once=True))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seen) == sorted(images)
    assert sum(s.done for s in stats) == 12
    jobs = setup.jobs()
    assert {j["status"] for j in jobs} == {"done"}
    verdicts = [v for j in jobs for v in setup.verdicts(j["digest"])]
    assert sorted(v.passed for v in verdicts) == [False] * 6 + [True] * 6


def test_failed_job_and_expired_lease(tmp_path: Path) -> None:
    now = [1000.0]
    store = ScanStore(tmp_path / "moray.db", clock=lambda: now[0])
    bad = store.enqueue_scan(str(tmp_path / "missing.tar"))
    stats = run_worker(store, _scan, name="w", once=True)
    assert stats.failed == 1
    assert store.jobs()[0]["status"] == "failed" and "no such image" in store.jobs()[0]["error"]
    (image,) = _images(tmp_path, 1)
    job_id = store.enqueue_scan(image)
    assert bad != job_id
    first = store.claim_scan("dead-worker", lease_seconds=10)
    assert first is not None and store.claim_scan("w2") is None  # leased
    now[0] += 11
    again = store.claim_scan("w2")
    assert again is not None and again.id == job_id and again.attempts == 2
    assert not store.finish_scan(job_id, "dead-worker", digest="x")  # lost its lease
    assert store.finish_scan(job_id, "w2", digest="sha256:y")


def test_stale_verdicts_are_requeued_after_import(tmp_path: Path) -> None:
    store = ScanStore(tmp_path / "moray.db")
    (image,) = _images(tmp_path, 1)
    store.enqueue_scan(image, POLICY)
    run_worker(store, _scan, name="w", verdicts=store, once=True)
    assert store.enqueue_stale() == 0
    store.record_import("advisories/", 1, 1, 0)  # new vulnerability data
    assert store.enqueue_stale() == 1
    assert [j["status"] for j in store.jobs()] == ["done", "queued"]
    job = store.claim_scan("w")
    assert job is not None and job.policy == POLICY  # requeued with its policy


def test_jobs_fail_without_vulnerability_data(tmp_path: Path) -> None:
    """A worker whose knowledge base never received an advisory records no verdict."""
    from moray.controlplane.scanner.workercli import job_scanner
    from moray.controlplane.vulndb.importer import import_path
    from moray.controlplane.vulndb.matcher import Matcher
    from tests.unit.vulndb.conftest import advisories_dir

    store = ScanStore(tmp_path / "moray.db")
    (image,) = _images(tmp_path, 1)
    store.enqueue_scan(image, policy=POLICY)
    scan = job_scanner(ScanOptions(matcher=Matcher(store)), allow_paths=True, insecure=False)
    stats = run_worker(store, scan, name="w", verdicts=store, once=True)
    assert stats.failed == 1 and "no vulnerability data" in store.jobs()[0]["error"]
    assert store.verdicts(store.jobs()[0]["digest"] or "x") == []
    import_path(advisories_dir(), store)
    store.enqueue_scan(image, policy=POLICY)
    assert run_worker(store, scan, name="w", verdicts=store, once=True).done == 1
