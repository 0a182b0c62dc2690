"""Scanning at scale through moray-server: a real server (SQLite and PostgreSQL) on
loopback, Debian's docker-registry on 127.0.0.1, real ``moray-scanner-worker`` processes.

A registry registered through the ``moray`` CLI is listed by the server's scheduler, its
two images are scanned by the workers and their verdicts stored; advisories imported
afterwards (straight into the server's SQLite store, or through the REST API) make one
image vulnerable and the server queues the rescans itself; its verdict changes. Bad and
under-privileged tokens are refused. A worker SIGKILLed mid-job loses its lease and the
job is claimed again; a worker stopped with SIGTERM gives its unfinished job back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import rootfs
from tests.fixtures.images.builder import Image
from tests.fixtures.images.registry import push_image
from tests.helpers.controlplane import ROOT, ServerProcess, wait_for
from tests.integration.test_scan_registry import ADVISORIES, REGISTRY_BIN, registry

__all__ = ["registry"]  # the module-scoped docker-registry fixture, shared

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REGISTRY_BIN is None, reason="Debian package docker-registry missing"),
    pytest.mark.skipif(not ADVISORIES.is_dir(), reason="no advisories (MORAY_ADVISORIES)"),
]

# every finding fails it: before the import neither image has one, after it the image
# with requests 2.19.0 has CVE-2018-18074 and CVE-2023-32681 (PYSEC/GHSA records)
POLICY = ("apiVersion: moray/v1\nkind: ImageAssurancePolicy\nmetadata: {name: strict}\n"
          "spec: {failOn: unknown}\n")
WORKER_BIN = Path(sys.executable).parent / "moray-scanner-worker"


@pytest.fixture(scope="module")
def images(registry: str) -> dict[str, str]:
    """Two small non-root Python images: one that the advisories will hit, one clean."""
    base = f"http://{registry}"
    vuln = Image([rootfs.dist_info("requests", "2.19.0")], config={"User": "1000:1000"})
    clean = Image([rootfs.dist_info("six", "1.16.0")], config={"User": "1000:1000"})
    return {"vuln": push_image(base, "sched/vuln", "1.0", vuln),
            "clean": push_image(base, "sched/clean", "1.0", clean)}


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    url = None
    if request.param == "postgresql":
        from tests.helpers.postgres import create_database

        url = create_database(request.getfixturevalue("pg_base"))
    srv = ServerProcess(tmp_path / "server", database_url=url,
                        extra_args=("--scan-poll-seconds", "0.3", "--scan-workers", "0")).start()
    yield srv
    srv.stop()


def _env(server: ServerProcess, token: str, data: Path) -> dict[str, str]:
    data.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(ROOT), "MORAY_SERVER": server.url,
            "MORAY_TOKEN": token, "MORAY_DATA_DIR": str(data)}


def moray(server: ServerProcess, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moray.controlplane.cli", *args], cwd=ROOT,
                          env=_env(server, server.admin_token, tmp / "cli"),
                          capture_output=True, text=True, timeout=120, check=False)


class Worker:
    """A ``moray-scanner-worker`` process (the console script) against the server."""

    def __init__(self, server: ServerProcess, token: str, tmp: Path, name: str,
                 *args: str) -> None:
        cmd = ([str(WORKER_BIN)] if WORKER_BIN.exists()
               else [sys.executable, "-m", "moray.controlplane.scanner.workercli"])
        self.log = tmp / f"{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--name", name, "--idle-wait", "0.2", *args], cwd=ROOT,
                env=_env(server, token, tmp / name), stdout=log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text()


def _jobs(api: Any) -> list[dict[str, Any]]:
    return list(api("GET", "/api/v1/scan-jobs", expect=200))


def _all_done(api: Any, n: int) -> list[dict[str, Any]] | None:
    jobs = _jobs(api)
    return jobs if len(jobs) == n and all(j["status"] == "done" for j in jobs) else None


def _verdict(api: Any, digest: str) -> dict[str, Any] | None:
    found = api("GET", f"/api/v1/images/{digest}/verdicts", expect=200)
    return found[0] if found else None


def test_registry_scanned_by_workers_and_rescanned_after_import(
        server: ServerProcess, registry: str, images: dict[str, str], tmp_path: Path) -> None:
    admin = server.api()
    operator = admin("POST", "/api/v1/tokens", expect=201,
                     json={"name": "workers", "role": "operator"})["token"]
    viewer = admin("POST", "/api/v1/tokens", expect=201,
                   json={"name": "look", "role": "viewer"})["token"]
    policy = tmp_path / "strict.yaml"
    policy.write_text(POLICY)
    # a first import that does not touch either image (a Go advisory): workers refuse to
    # record a verdict against a knowledge base that never received any data
    _import(server, tmp_path, ADVISORIES / "GO-2020-0015.json")
    added = moray(server, tmp_path, "scan", "registry", "add", registry, "--repository",
                  "sched/vuln", "--repository", "sched/clean", "--insecure-registry",
                  "--interval", "3600", "--policy", str(policy))
    assert added.returncode == 0, added.stderr
    listed = moray(server, tmp_path, "scan", "registry", "list")
    assert registry in listed.stdout and "sched/clean,sched/vuln" in listed.stdout

    workers = [Worker(server, operator, tmp_path, f"w{i}", "--lease-seconds", "30")
               for i in (1, 2)]
    try:
        jobs = wait_for(lambda: _all_done(admin, 2), timeout=90, interval=0.2,
                        what="both images scanned")
        digests = {j["image"].rsplit("/", 1)[-1]: j["digest"] for j in jobs}
        assert digests == {"vuln:1.0": images["vuln"], "clean:1.0": images["clean"]}
        assert {j["worker"] for j in jobs} <= {"w1", "w2"}
        for digest in images.values():
            v = _verdict(admin, digest)
            assert v is not None and v["passed"] and not v["stale"], v
            assert v["policy"] == "strict" and v["vulndb_generation"] == 1

        # new vulnerability data: nobody runs rescan-stale; the server sees the change
        _import(server, tmp_path, ADVISORIES)

        def rescanned() -> dict[str, Any] | None:
            v = _verdict(admin, images["vuln"])
            c = _verdict(admin, images["clean"])
            return {"vuln": v, "clean": c} if v and c and not v["stale"] and not c[
                "stale"] else None

        after = wait_for(rescanned, timeout=90, interval=0.2, what="automatic rescans")
        assert after["vuln"]["passed"] is False
        assert "CVE-2018-18074" in " ".join(after["vuln"]["reasons"])
        assert after["clean"]["passed"] is True and after["clean"]["vulndb_generation"] >= 2
        # the worker sent the findings with the verdict (the admission inventory joins them)
        found = admin("GET", f"/api/v1/images/{images['vuln']}/vulnerabilities", expect=200)
        assert any("CVE-2018-18074" in (v["id"], *v["aliases"]) and v["package"] == "requests"
                   for v in found), found
        assert admin("GET", f"/api/v1/images/{images['clean']}/vulnerabilities",
                     expect=200) == []
        jobs = wait_for(lambda: _all_done(admin, 4), timeout=30, what="rescan jobs closed")
        assert {j["worker"] for j in jobs} <= {"w1", "w2"}
        metrics = admin.http.get("/metrics").text
        assert 'moray_scan_jobs{status="done"} 4.0' in metrics
        assert 'moray_scan_jobs_queued_total{reason="registry"} 2.0' in metrics
        assert 'moray_scan_jobs_queued_total{reason="rescan"} 2.0' in metrics
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], [w.output()[-2000:] for w in workers]
    assert all("done " in w.output() for w in workers)
    _no_duplicates_and_refused_tokens(server, registry, viewer, tmp_path)


def _import(server: ServerProcess, tmp_path: Path, path: Path) -> None:
    if server.database_url is None:  # straight into the server's SQLite store
        imported = moray(server, tmp_path, "--db", str(server.data_dir / "moray.db"),
                         "vulndb", "import", str(path))
    else:                            # through the REST API
        imported = moray(server, tmp_path, "vulndb", "import", str(path))
    assert imported.returncode in (0, 1), imported.stderr  # 1: some files skipped
    assert "records" in imported.stdout


def _no_duplicates_and_refused_tokens(server: ServerProcess, registry: str, viewer: str,
                                      tmp_path: Path) -> None:
    admin = server.api()
    # no duplicates: listed again twice while nothing takes jobs -> two queued jobs
    (reg,) = admin("GET", "/api/v1/scan-registries", expect=200)
    for _ in range(2):
        admin("POST", f"/api/v1/scan-registries/{reg['id']}/run", expect=200)
        wait_for(lambda: admin("GET", "/api/v1/scan-registries", expect=200)[0]["next_run"]
                 > 1, timeout=30, what="registry listed")
    queued = [j for j in _jobs(admin) if j["status"] == "queued"]
    assert sorted(j["image"] for j in queued) == [f"{registry}/sched/clean:1.0",
                                                  f"{registry}/sched/vuln:1.0"]

    # tokens: none, unknown and viewer are refused; a worker with a bad token exits 2
    claim = {"json": {"worker": "x"}}
    assert server.api("nope").status("POST", "/api/v1/scan-jobs/claim", **claim) == 401
    assert server.api(viewer).status("POST", "/api/v1/scan-jobs/claim", **claim) == 403
    assert server.api(viewer).status("POST", "/api/v1/scan-registries", json={
        "registry": registry}) == 403
    bad = Worker(server, "not-a-token", tmp_path, "bad")
    assert bad.proc.wait(60) == 2 and "refused: HTTP 401" in bad.output()
    assert len([j for j in _jobs(admin) if j["status"] == "queued"]) == 2  # nothing taken


def test_server_scans_by_itself_by_default(registry: str, images: dict[str, str],
                                           tmp_path: Path) -> None:
    """No worker process: the server's own worker thread (--scan-workers 1) scans."""
    srv = ServerProcess(tmp_path / "server", extra_args=("--scan-poll-seconds", "0.3")).start()
    try:
        admin = srv.api()
        _import(srv, tmp_path, ADVISORIES / "GO-2020-0015.json")  # some data to match on
        admin("POST", "/api/v1/scan-images", expect=201, json={
            "image": f"{registry}/sched/clean:1.0", "insecure": True, "policy": POLICY})
        (job,) = wait_for(lambda: _all_done(admin, 1), timeout=60, what="scanned in-server")
        assert job["digest"] == images["clean"] and ":server-0" in job["worker"]
        verdict = _verdict(admin, images["clean"])
        assert verdict is not None and verdict["passed"]
        refused = admin.http.post("/api/v1/scan-images", json={
            "image": "registry.example.com/x:1", "insecure": True})
        assert refused.status_code == 422 and "loopback" in refused.text
    finally:
        srv.stop()


@pytest.fixture
def tarpit() -> Iterator[str]:
    """A "registry" on 127.0.0.1 that accepts connections and never answers: a scan of
    an image there hangs until the worker is killed or stopped."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_killed_worker_loses_its_lease_and_stopped_worker_gives_back(
        server: ServerProcess, tarpit: str, tmp_path: Path) -> None:
    admin = server.api()
    operator = admin("POST", "/api/v1/tokens", expect=201,
                     json={"name": "workers", "role": "operator"})["token"]
    _import(server, tmp_path, ADVISORIES / "GO-2020-0015.json")  # else jobs fail at once
    admin("POST", "/api/v1/scan-images", expect=201,
          json={"image": f"{tarpit}/slow/app:1", "insecure": True, "interval_seconds": 3600})
    (job,) = wait_for(lambda: _jobs(admin), timeout=30, what="image queued by the scheduler")
    first = Worker(server, operator, tmp_path, "doomed", "--lease-seconds", "2")
    try:
        wait_for(lambda: _jobs(admin)[0]["worker"] == "doomed", timeout=30, interval=0.1,
                 what="job leased to the first worker")
        first.stop(signal.SIGKILL)
        second = Worker(server, operator, tmp_path, "heir", "--lease-seconds", "2",
                        "--grace", "0.5")
        try:
            taken = wait_for(lambda: (j := _jobs(admin)[0])["worker"] == "heir" and j,
                             timeout=30, interval=0.1, what="lease expired, job re-claimed")
            assert taken["id"] == job["id"] and taken["attempts"] == 2
            assert taken["status"] == "running"
            # the heir extends its 2 s lease while its scan hangs: nobody can take the job
            time.sleep(3)
            assert admin.status("POST", "/api/v1/scan-jobs/claim",
                                json={"worker": "probe"}) == 204
            (still,) = _jobs(admin)
            assert (still["worker"], still["attempts"]) == ("heir", 2)
        finally:
            code = second.stop(signal.SIGTERM)
        assert code == 0 and "released 1" in second.output(), second.output()[-2000:]
        (back,) = _jobs(admin)
        assert (back["status"], back["attempts"]) == ("queued", 1)  # given back, not failed
    finally:
        first.stop(signal.SIGKILL)
