"""A scan job queue and verdict sink on moray-server's REST API, for workers on any host.

Implements ``worker.JobQueue`` and ``worker.VerdictSink`` over the endpoints in
``controlplane.scanner.service.api``; ``RemoteMatcher`` matches package coordinates against the
server's knowledge base, so advisories are imported once, on the server, and a worker
needs no vulnerability data of its own. 401/403 raise ``AccessDenied`` (retrying cannot
help); other failures ``RemoteError`` (the worker retries).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Any

import httpx

from moray.controlplane.scanner.engine.model import OSRelease, Package, Severity, VulnFinding
from moray.controlplane.scanner.errors import AccessDenied, ScanError
from moray.controlplane.store.scanstore import ImageReport, ImageVuln, ScanJob

log = logging.getLogger(__name__)


class RemoteError(ScanError):
    """The server refused or failed a scan-job request (``status`` 0: unreachable)."""

    def __init__(self, message: str, *, source: str = "", status: int = 0) -> None:
        self.status = status
        super().__init__(message, source=source)


class RemoteAccessDenied(RemoteError, AccessDenied):
    """HTTP 401 or 403: the token is wrong, revoked, or its role may not do this."""


class _Client:
    def __init__(self, base_url: str, token: str, *, client: httpx.Client | None = None,
                 timeout: float = 30.0, verify: bool | str | ssl.SSLContext = True) -> None:
        self.base = base_url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout, verify=verify)
        self._headers = {"Authorization": f"Bearer {token}"}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None
                 ) -> httpx.Response:
        try:
            resp = self._client.request(method, self.base + path, json=body,
                                        headers=self._headers)
        except httpx.HTTPError as err:
            raise RemoteError(f"server unreachable: {err}", source=self.base) from err
        if resp.status_code in (401, 403):
            raise RemoteAccessDenied(f"HTTP {resp.status_code} for {path}: "
                                     f"{resp.text[:300]}", source=self.base,
                                     status=resp.status_code)
        if resp.status_code >= 400:
            raise RemoteError(f"HTTP {resp.status_code} for {path}: {resp.text[:300]}",
                              source=self.base, status=resp.status_code)
        return resp

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._request("POST", path, body)

    def generation(self) -> int:
        """The server's vulnerability data generation."""
        return int(self.status()["generation"])

    def status(self) -> dict[str, Any]:
        """The server's ``moray vulndb status`` (advisories, last import, generation)."""
        doc = self._request("GET", "/api/v1/vulndb/status").json()
        return doc if isinstance(doc, dict) else {}



class RemoteMatcher(_Client):
    """Vulnerability matching on the server's knowledge base (``moray-scan --server``):
    only package coordinates are sent, never files or findings of other kinds."""

    def match(self, packages: Sequence[Package], os: OSRelease | None) -> list[VulnFinding]:
        body = {
            "os": {"id": os.id, "version_id": os.version_id, "codename": os.codename}
            if os else None,
            "packages": [{"ecosystem": str(p.ecosystem), "name": p.name, "version": p.version,
                          "namespace": p.namespace, "source_name": p.source_name,
                          "source_version": p.source_version} for p in packages],
        }
        doc = self._post("/api/v1/vulndb/match", body).json()
        return [
            VulnFinding(id=str(v["id"]), package=packages[int(v["package"])],
                        severity=Severity.parse(v.get("severity")),
                        fixed_version=str(v.get("fixed_version", "")),
                        aliases=tuple(v.get("aliases") or ()), summary=str(v.get("summary", "")),
                        source=str(v.get("source", "")), cvss_score=v.get("cvss_score"),
                        severity_source=str(v.get("severity_source", "")))
            for v in doc.get("vulnerabilities", [])
        ]


class HttpJobQueue(_Client):
    """Scan jobs leased from the server, verdicts reported to it."""

    def claim_scan(self, worker: str, lease_seconds: float = 600.0,
                   max_attempts: int = 3) -> ScanJob | None:
        resp = self._post("/api/v1/scan-jobs/claim",
                          {"worker": worker, "lease_seconds": lease_seconds})
        if resp.status_code == 204:
            return None
        doc = resp.json()
        return ScanJob(int(doc["id"]), str(doc["image"]), str(doc.get("policy", "")),
                       int(doc.get("attempts", 1)), bool(doc.get("insecure", False)),
                       str(doc.get("credentials", "")))

    def extend_scan(self, job_id: int, worker: str, lease_seconds: float = 600.0) -> bool:
        resp = self._post(f"/api/v1/scan-jobs/{job_id}/extend",
                          {"worker": worker, "lease_seconds": lease_seconds})
        return bool(resp.json().get("ok"))

    def release_scan(self, job_id: int, worker: str) -> bool:
        resp = self._post(f"/api/v1/scan-jobs/{job_id}/release", {"worker": worker})
        return bool(resp.json().get("ok"))

    def finish_scan(self, job_id: int, worker: str, *, digest: str = "",
                    error: str = "") -> bool:
        resp = self._post(f"/api/v1/scan-jobs/{job_id}/finish",
                          {"worker": worker, "digest": digest, "error": error})
        return bool(resp.json().get("ok"))

    def record_verdict(self, image_digest: str, image: str, policy: str, passed: bool,
                       reasons: list[str], generation: int | None = None, *,
                       vulnerabilities: Sequence[ImageVuln] | None = None,
                       config_digest: str = "", job_id: int | None = None,
                       report: ImageReport | None = None) -> None:
        self._post(f"/api/v1/images/{image_digest}/verdicts",
                   {"image": image, "policy": policy, "passed": passed, "reasons": reasons,
                    "job_id": job_id,
                    "vulndb_generation": generation, "config_digest": config_digest,
                    "report": None if report is None else {**report.findings(),
                                                            "sbom": report.sbom},
                    "vulnerabilities": None if vulnerabilities is None
                    else [v.as_dict() for v in vulnerabilities]})
