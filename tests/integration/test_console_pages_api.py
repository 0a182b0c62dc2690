"""The REST endpoints behind the console pages images and audit, on a real moray server
with SQLite and with PostgreSQL: an image's report (secrets without their text, malware,
CycloneDX SBOM) stored with its verdict and served back, the images list with finding
counts (whole, and as keyset pages with filters), and the audit log's newest-first pages
with actor/action filters."""

from __future__ import annotations

import json

from tests.helpers.controlplane import ServerProcess

DIGEST = "sha256:" + "ab" * 32
SECRET = "wJalrXUtnFEMI-not-a-real-key-0000"


def test_image_report_and_list(server: ServerProcess) -> None:
    api = server.api()
    sbom = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": []})
    api("POST", f"/api/v1/images/{DIGEST}/verdicts", expect=200, json={
        "image": "r.example/team/app:1", "policy": "strict", "passed": False,
        "reasons": ["1 secret"],
        "vulnerabilities": [
            {"id": "CVE-1", "severity": "high", "package": "openssl", "version": "1",
             "fixed_version": "2", "aliases": ["DSA-1"]},
            {"id": "CVE-2", "severity": "low", "package": "zlib", "version": "1"}],
        "report": {"secrets": [{"rule": "aws-secret", "title": "AWS secret access key",
                                "severity": "critical", "path": "root/.aws/credentials",
                                "line": 3, "layer": "sha256:1", "deleted_later": True,
                                "masked": SECRET[:4] + "****", "match": SECRET}],
                   "malware": [{"rule": "sha256", "path": "tmp/eicar.com",
                                "layer": "sha256:1", "sha256": "00", "severity": "critical",
                                "deleted_later": False}],
                   "sbom": sbom}})
    (img,) = [i for i in api("GET", "/api/v1/images", expect=200) if i["digest"] == DIGEST]
    assert img["passed"] is False and img["severities"] == {"high": 1, "low": 1}
    assert (img["secrets"], img["malware"]) == (1, 1)
    assert img["verdicts"][0]["reasons"] == ["1 secret"]
    found = api.http.get(f"/api/v1/images/{DIGEST}/findings")
    assert found.status_code == 200 and SECRET[:4] not in found.text
    assert found.json()["secrets"][0]["line"] == 3 and found.json()["sbom"] is True
    got = api.http.get(f"/api/v1/images/{DIGEST}/sbom")
    assert got.json()["bomFormat"] == "CycloneDX"
    assert got.headers["x-content-type-options"] == "nosniff"
    # a verdict without a report keeps the stored one
    api("POST", f"/api/v1/images/{DIGEST}/verdicts", expect=200, json={
        "image": "r.example/team/app:1", "policy": "base", "passed": True})
    assert api("GET", f"/api/v1/images/{DIGEST}/findings", expect=200)["malware"]
    assert api.status("GET", "/api/v1/images/sha256:00/findings") == 404
    # pages (by reference, after + next) and the page's filters
    other = "sha256:" + "cd" * 32
    api("POST", f"/api/v1/images/{other}/verdicts", expect=200, json={
        "image": "r.example/team/base:2", "policy": "strict", "passed": True})
    whole = api("GET", "/api/v1/images", expect=200)
    first = api("GET", "/api/v1/images", expect=200, params={"page": 1, "limit": 1})
    assert first["images"] == whole[:1] and first["next"] == DIGEST
    second = api("GET", "/api/v1/images", expect=200, params={"after": first["next"]})
    assert second == {"images": whole[1:], "next": None}
    failed = api("GET", "/api/v1/images", expect=200, params={"page": 1, "verdict": "fail"})
    assert [i["digest"] for i in failed["images"]] == [DIGEST]
    named = api("GET", "/api/v1/images", expect=200, params={"page": 1, "name": "BASE"})
    assert [i["digest"] for i in named["images"]] == [other]
    assert api.status("GET", "/api/v1/images", params={"page": 1, "limit": 1001}) == 422


def test_audit_pages_newest_first_with_filters(server: ServerProcess) -> None:
    api = server.api()
    for i in range(5):
        api("POST", "/api/v1/enrollment-tokens", expect=201, json={"comment": f"n{i}"})
    page = api("GET", "/api/v1/audit", expect=200, params={"page": 1, "limit": 2,
                                                          "action": "enrollment_token."})
    assert len(page["entries"]) == 2 and page["next"] == page["entries"][-1]["id"]
    ids = [e["id"] for e in page["entries"]]
    rest = api("GET", "/api/v1/audit", expect=200, params={
        "before": page["next"], "limit": 100, "action": "enrollment_token."})
    ids += [e["id"] for e in rest["entries"]]
    assert rest["next"] is None and ids == sorted(ids, reverse=True)
    assert {e["action"] for e in rest["entries"] + page["entries"]} <= {
        "enrollment_token.issue", "enrollment_token.create"}
    assert len(ids) == 5
    actor = page["entries"][0]["actor"]
    mine = api("GET", "/api/v1/audit", expect=200, params={
        "page": 1, "actor": actor.split(":", 1)[1], "limit": 1000})["entries"]
    assert mine and {e["actor"] for e in mine} == {actor}
    # the old list shape when neither page nor before is given
    assert isinstance(api("GET", "/api/v1/audit", expect=200), list)
