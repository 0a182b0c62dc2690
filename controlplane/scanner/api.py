"""REST endpoints for scan jobs, verdicts and vulndb status, for moray-server to mount.

``scan_router(store, authorize)`` returns a FastAPI router; ``authorize(method, path)``
is the server's dependency factory (``require`` in controlplane/server/rest.py) and
``SCAN_ACCESS`` lists the role class each endpoint needs ("read" or "write"), to merge
into the server's access matrix. Remote scan workers (``moray scan worker --server``)
use these endpoints through ``controlplane.scanner.remote.HttpJobQueue``; the admission
controller reads ``GET /api/v1/images/{digest}/verdicts``.
"""

# No `from __future__ import annotations`: FastAPI reads endpoint annotations at
# definition time and they refer to closures.

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from controlplane.scanner.model import Ecosystem, OSRelease, Package
from controlplane.store.scanstore import ScanStore
from controlplane.vulndb.matcher import Matcher

log = logging.getLogger(__name__)

P = "/api/v1"
SCAN_ACCESS: dict[tuple[str, str], str] = {
    ("POST", P + "/scan-jobs"): "write",
    ("GET", P + "/scan-jobs"): "read",
    ("POST", P + "/scan-jobs/claim"): "write",
    ("POST", P + "/scan-jobs/{job_id}/finish"): "write",
    ("POST", P + "/scan-jobs/rescan-stale"): "write",
    ("GET", P + "/images/{digest}/verdicts"): "read",
    ("POST", P + "/images/{digest}/verdicts"): "write",
    ("GET", P + "/vulndb/status"): "read",
    ("POST", P + "/vulndb/match"): "read",
}


class JobIn(BaseModel):
    image: str = Field(min_length=1, max_length=1024)
    policy: str = Field("", description="ImageAssurancePolicy document (YAML), optional")


class ClaimIn(BaseModel):
    worker: str = Field(min_length=1, max_length=256)
    lease_seconds: float = Field(600.0, gt=0, le=86400)


class FinishIn(BaseModel):
    worker: str = Field(min_length=1, max_length=256)
    digest: str = ""
    error: str = ""


class PackageIn(BaseModel):
    ecosystem: Ecosystem
    name: str = Field(max_length=512)
    version: str = Field(max_length=256)
    namespace: str = ""
    source_name: str = ""
    source_version: str = ""


class OSIn(BaseModel):
    id: str
    version_id: str = ""
    codename: str = ""


class MatchIn(BaseModel):
    os: OSIn | None = None
    packages: list[PackageIn] = Field(max_length=200_000)


class VerdictIn(BaseModel):
    image: str
    policy: str
    passed: bool
    reasons: list[str] = []


def scan_router(store: ScanStore,
                authorize: Callable[[str, str], Callable[..., Any]]) -> APIRouter:
    router = APIRouter()

    def dep(method: str, path: str) -> Any:
        return Depends(authorize(method, path))

    @router.post(P + "/scan-jobs")
    def enqueue(body: JobIn,
                _: Annotated[Any, dep("POST", P + "/scan-jobs")]) -> dict[str, int]:
        return {"id": store.enqueue_scan(body.image, body.policy)}

    @router.get(P + "/scan-jobs")
    def jobs(_: Annotated[Any, dep("GET", P + "/scan-jobs")]) -> list[dict[str, Any]]:
        return store.jobs()

    @router.post(P + "/scan-jobs/claim", response_model=None)
    def claim(body: ClaimIn, _: Annotated[Any, dep("POST", P + "/scan-jobs/claim")]
              ) -> dict[str, Any] | Response:
        job = store.claim_scan(body.worker, body.lease_seconds)
        if job is None:
            return Response(status_code=204)
        return {"id": job.id, "image": job.image, "policy": job.policy, "attempts": job.attempts}

    @router.post(P + "/scan-jobs/{job_id}/finish")
    def finish(job_id: int, body: FinishIn,
               _: Annotated[Any, dep("POST", P + "/scan-jobs/{job_id}/finish")]
               ) -> dict[str, bool]:
        return {"ok": store.finish_scan(job_id, body.worker, digest=body.digest,
                                        error=body.error)}

    @router.post(P + "/scan-jobs/rescan-stale")
    def rescan(_: Annotated[Any, dep("POST", P + "/scan-jobs/rescan-stale")]
               ) -> dict[str, int]:
        return {"queued": store.enqueue_stale()}

    @router.get(P + "/images/{digest}/verdicts")
    def verdicts(digest: str, _: Annotated[Any, dep("GET", P + "/images/{digest}/verdicts")]
                 ) -> list[dict[str, Any]]:
        return [{"policy": v.policy, "passed": v.passed, "reasons": v.reasons,
                 "vulndb_generation": v.vulndb_generation, "image": v.image,
                 "created": v.created, "stale": v.vulndb_generation < store.generation()}
                for v in store.verdicts(digest)]

    @router.post(P + "/images/{digest}/verdicts")
    def put_verdict(digest: str, body: VerdictIn,
                    _: Annotated[Any, dep("POST", P + "/images/{digest}/verdicts")]
                    ) -> dict[str, bool]:
        store.record_verdict(digest, body.image, body.policy, body.passed, body.reasons)
        return {"ok": True}

    @router.post(P + "/vulndb/match")
    def match(body: MatchIn, _: Annotated[Any, dep("POST", P + "/vulndb/match")]
              ) -> dict[str, Any]:
        packages = [Package(p.ecosystem, p.name, p.version, "", "", source_name=p.source_name,
                            source_version=p.source_version, namespace=p.namespace)
                    for p in body.packages]
        index = {id(p): i for i, p in enumerate(packages)}
        os = OSRelease(body.os.id, body.os.version_id, body.os.codename) if body.os else None
        found = Matcher(store).match(packages, os)
        return {"generation": store.generation(), "vulnerabilities": [
            {"package": index[id(f.package)], "id": f.id, "severity": str(f.severity),
             "fixed_version": f.fixed_version, "aliases": list(f.aliases),
             "summary": f.summary, "source": f.source, "cvss_score": f.cvss_score}
            for f in found]}

    @router.get(P + "/vulndb/status")
    def status(_: Annotated[Any, dep("GET", P + "/vulndb/status")]) -> dict[str, Any]:
        return store.status()

    return router
