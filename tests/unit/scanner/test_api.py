"""Scan-job REST endpoints and the remote worker queue, on a bare FastAPI app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi import Header, HTTPException  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image  # noqa: E402
from moray.controlplane.scanner.engine.source import open_source  # noqa: E402
from moray.controlplane.scanner.service.api import SCAN_ACCESS, scan_router  # noqa: E402
from moray.controlplane.scanner.service.remote import HttpJobQueue, RemoteError, RemoteMatcher  # noqa: E402
from moray.controlplane.scanner.service.worker import run_worker  # noqa: E402
from moray.controlplane.server.rest import Principal  # noqa: E402
from moray.controlplane.store.scanstore import ScanStore  # noqa: E402
from moray.controlplane.vulndb.importer import import_path  # noqa: E402
from moray.controlplane.vulndb.matcher import Matcher  # noqa: E402
from tests.fixtures.images import scenarios  # noqa: E402
from tests.fixtures.images.builder import Image  # noqa: E402
from tests.unit.vulndb.conftest import advisories_dir  # noqa: E402

POLICY = "kind: ImageAssurancePolicy\nmetadata: {name: p}\nspec: {notRoot: true}\n"


def _authorize(method: str, path: str) -> Any:
    assert (method, path) in SCAN_ACCESS

    def check(authorization: str = Header("")) -> Principal:
        if authorization != "Bearer good":
            raise HTTPException(401, "invalid token")
        return Principal("test", "admin")

    return check


@pytest.fixture
def server(tmp_path: Path) -> tuple[TestClient, ScanStore]:
    store = ScanStore(tmp_path / "moray.db")
    app = fastapi.FastAPI()
    app.include_router(scan_router(store, _authorize))
    return TestClient(app), store


def test_remote_worker_round_trip(server: tuple[TestClient, ScanStore], tmp_path: Path) -> None:
    client, _ = server
    image = tmp_path / "img.tar"
    Image([{"etc/x": b"1"}]).write_docker_archive(image)
    auth = {"Authorization": "Bearer good"}
    assert client.post("/api/v1/scan-jobs", json={"image": str(image), "policy": POLICY},
                       headers=auth).json() == {"id": 1}
    queue = HttpJobQueue("http://testserver", "good", client=client)
    stats = run_worker(queue, lambda job: scan_image(open_source(Path(job.image)), ScanOptions()),
                       name="remote-1", verdicts=queue, once=True)
    assert (stats.done, stats.failed) == (1, 0)
    (job,) = client.get("/api/v1/scan-jobs", headers=auth).json()
    assert job["status"] == "done" and job["worker"] == "remote-1"
    (verdict,) = client.get(f"/api/v1/images/{job['digest']}/verdicts", headers=auth).json()
    assert verdict["policy"] == "p" and verdict["passed"] is False and not verdict["stale"]
    assert client.get("/api/v1/vulndb/status", headers=auth).json()["verdicts"] == 1
    assert queue.claim_scan("remote-1") is None  # 204: nothing left


def test_auth_is_required(server: tuple[TestClient, ScanStore]) -> None:
    client, _ = server
    assert client.get("/api/v1/scan-jobs").status_code == 401
    with pytest.raises(RemoteError, match="HTTP 401"):
        HttpJobQueue("http://testserver", "bad", client=client).claim_scan("w")


def test_scan_against_an_empty_server_store_fails(server: tuple[TestClient, ScanStore]
                                                  ) -> None:
    """moray-scan --server: the server's knowledge base is checked like a local one."""
    import argparse

    from moray.controlplane.scanner.cli import check_vulndb
    from moray.controlplane.scanner.errors import VulnDataError

    client, _ = server
    status = RemoteMatcher("http://testserver", "good", client=client).status()
    args = argparse.Namespace(allow_stale_vulndb=False, max_vulndb_age=7.0)
    with pytest.raises(VulnDataError, match="vulnerability store of http://s is empty"):
        check_vulndb(args, status, "of http://s")
    check_vulndb(argparse.Namespace(allow_stale_vulndb=True, max_vulndb_age=7.0), status,
                 "of http://s")  # only a warning


def test_remote_matching_equals_local(tmp_path: Path) -> None:
    store = ScanStore(tmp_path / "moray.db")
    import_path(advisories_dir(), store)
    app = fastapi.FastAPI()
    app.include_router(scan_router(store, _authorize))
    client = TestClient(app)
    image = tmp_path / "img.tar"
    scenarios.debian_app().write_docker_archive(image)
    local = scan_image(open_source(image), ScanOptions(matcher=Matcher(store)))
    remote = scan_image(open_source(image), ScanOptions(
        matcher=RemoteMatcher("http://testserver", "good", client=client)))
    key = [(v.package.name, v.id, v.fixed_version, v.severity) for v in local.vulnerabilities]
    assert key and key == [(v.package.name, v.id, v.fixed_version, v.severity)
                           for v in remote.vulnerabilities]
    assert remote.vulnerabilities[0].package.path  # mapped back to the scanned package


def test_registration_import_and_lease_endpoints(tmp_path: Path) -> None:
    store = ScanStore(tmp_path / "moray.db")
    woken: list[str] = []
    audited: list[tuple[str, str]] = []
    app = fastapi.FastAPI()
    app.include_router(scan_router(store, _authorize, on_change=lambda: woken.append("x"),
                                   audit=lambda who, action, target, _d: audited.append(
                                       (action, target))))
    client = TestClient(app)
    auth = {"Authorization": "Bearer good"}
    r = client.post("/api/v1/scan-registries", headers=auth, json={
        "registry": "127.0.0.1:5000", "repositories": ["team/app"], "insecure": True,
        "credentials": "env:REG", "interval_seconds": 60, "policy": POLICY})
    assert r.status_code == 201 and r.json()["has_policy"] and r.json()["repositories"] == [
        "team/app"]
    assert "password" not in r.text
    for bad in ({"registry": "registry.example.com", "insecure": True},
                {"registry": "127.0.0.1:5000", "credentials": "hunter2"},
                {"registry": "127.0.0.1:5000", "policy": "kind: Other"}):
        assert client.post("/api/v1/scan-registries", headers=auth, json=bad
                           ).status_code == 422, bad
    assert client.post("/api/v1/scan-images", headers=auth, json={
        "image": "127.0.0.1:5000/team/db:1", "insecure": True}).status_code == 201
    assert [i["image"] for i in client.get("/api/v1/scan-images", headers=auth).json()] == [
        "127.0.0.1:5000/team/db:1"]
    again = client.post("/api/v1/scan-registries", headers=auth, json={
        "registry": "127.0.0.1:5000", "repositories": ["team/app"], "insecure": True})
    assert again.status_code == 409 and "registered already" in again.text
    assert client.post("/api/v1/scan-images", headers=auth, json={
        "image": "127.0.0.1:5000/team/db:1", "insecure": True}).status_code == 409
    (reg,) = client.get("/api/v1/scan-registries", headers=auth).json()
    assert client.post(f"/api/v1/scan-registries/{reg['id']}/run", headers=auth).json() == {
        "ok": True}
    assert client.delete("/api/v1/scan-registries/99", headers=auth).status_code == 404
    assert client.delete(f"/api/v1/scan-registries/{reg['id']}", headers=auth).status_code == 200
    files = {p.name: p.read_text() for p in sorted(advisories_dir().glob("PYSEC-*.json"))}
    r = client.post("/api/v1/vulndb/import", headers=auth, json={"files": files})
    assert r.json()["records"] == len(files) and r.json()["generation"] == 1
    assert client.post("/api/v1/vulndb/import", headers=auth, json={
        "files": {"../../etc/x.sh": "x"}}).status_code == 422
    assert [a for a, _ in audited] == ["scan_registry.add", "scan_image.add",
                                       "scan_registry.run", "scan_registry.remove",
                                       "vulndb.import"]
    assert len(woken) == 5
    queue = HttpJobQueue("http://testserver", "good", client=client)
    store.enqueue_scan("127.0.0.1:5000/team/db:1", insecure=True, credentials="env:REG")
    job = queue.claim_scan("w", lease_seconds=60)
    assert job is not None and job.insecure and job.credentials == "env:REG"
    assert queue.extend_scan(job.id, "w", 60) and not queue.extend_scan(job.id, "x", 60)
    assert queue.generation() == 1
    assert queue.release_scan(job.id, "w")
    assert store.jobs()[0]["status"] == "queued"


def test_image_report_endpoints(tmp_path: Path) -> None:
    """A remote worker's scan stores the image's vulnerabilities, secrets (rule, file, line:
    never the matched text), malware and CycloneDX SBOM; the console's endpoints serve
    them."""
    from tests.fixtures.images import rootfs

    store = ScanStore(tmp_path / "moray.db")
    import_path(advisories_dir(), store)
    app = fastapi.FastAPI()
    app.include_router(scan_router(store, _authorize))
    client = TestClient(app)
    auth = {"Authorization": "Bearer good"}
    image = tmp_path / "img.tar"
    scenarios.debian_app().write_docker_archive(image)
    client.post("/api/v1/scan-jobs", json={"image": str(image), "policy": POLICY}, headers=auth)
    queue = HttpJobQueue("http://testserver", "good", client=client)
    from moray.controlplane.scanner.engine.malware import MalwareScanner
    from moray.controlplane.scanner.engine.secrets import SecretScanner

    options = ScanOptions(matcher=Matcher(store), secrets=SecretScanner(),
                          malware=MalwareScanner())
    stats = run_worker(queue, lambda job: scan_image(open_source(Path(job.image)), options),
                       name="w", verdicts=queue, once=True)
    assert stats.done == 1
    (img,) = client.get("/api/v1/images", headers=auth).json()
    digest = img["digest"]
    assert img["passed"] is False and img["verdicts"][0]["policy"] == "p"
    assert img["secrets"] >= 1 and img["malware"] >= 1 and sum(img["severities"].values())
    # (GET /api/v1/images/{digest}/vulnerabilities is the admission router's)
    assert len(store.vulnerabilities(digest)) == sum(img["severities"].values())
    found = client.get(f"/api/v1/images/{digest}/findings", headers=auth)
    body = found.text
    assert rootfs.AWS_SECRET not in body and rootfs.AWS_SECRET[:6] not in body
    assert rootfs.AWS_KEY_ID not in body and "masked" not in body
    secret = found.json()["secrets"][0]
    assert secret["path"] == "root/.aws/credentials" and secret["line"] >= 1
    assert found.json()["sbom"] is True and found.json()["malware"][0]["path"]
    sbom = client.get(f"/api/v1/images/{digest}/sbom", headers=auth)
    assert sbom.status_code == 200 and "attachment" in sbom.headers["content-disposition"]
    assert sbom.headers["x-content-type-options"] == "nosniff"
    assert sbom.json()["bomFormat"] == "CycloneDX"
    assert client.get("/api/v1/images/sha256:none/findings", headers=auth).status_code == 404
    assert client.get("/api/v1/images/sha256:none/sbom", headers=auth).status_code == 404
    # a client sending a secret's text: the server keeps only the named fields
    client.post(f"/api/v1/images/{digest}/verdicts", headers=auth, json={
        "image": "x", "policy": "p", "passed": True, "report": {"secrets": [
            {"rule": "r", "path": "f", "line": 3, "masked": "hunter2", "match": "hunter2"}]}})
    assert "hunter2" not in client.get(f"/api/v1/images/{digest}/findings", headers=auth).text
