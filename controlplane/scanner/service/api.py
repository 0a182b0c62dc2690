"""REST endpoints for scan jobs, verdicts, scheduled registries and images, and the
vulnerability knowledge base; moray-server mounts them (controlplane/server/rest.py).

``scan_router(store, authorize, on_change)`` returns a FastAPI router; ``authorize(method,
path)`` is the server's dependency factory (``require`` in controlplane/server/rest.py)
and ``SCAN_ACCESS`` lists the role class each endpoint needs ("read" or "write"), which
the server merges into its access matrix. ``on_change`` is called after a registration
or an import (the server wakes its scan scheduler). Scan workers
(``moray-scanner-worker --server``) use these endpoints through
``controlplane.scanner.service.remote.HttpJobQueue``; the admission controller reads
``GET /api/v1/images/{digest}/verdicts``.
"""

# No `from __future__ import annotations`: FastAPI reads endpoint annotations at
# definition time and they refer to closures.

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from moray.controlplane.scanner.engine.model import Ecosystem, OSRelease, Package
from moray.controlplane.scanner.errors import ScanError
from moray.controlplane.scanner.service import credentials
from moray.controlplane.scanner.service.scheduler import (
    already_registered,
    check_image,
    check_policy,
    check_registry,
)
from moray.controlplane.server.tenancy import hidden, require_global, scope, target
from moray.controlplane.store.scan.verdicts import (
    MALWARE_FIELDS,
    MAX_SBOM,
    SECRET_FIELDS,
    clean_findings,
)
from moray.controlplane.store.scanstore import ImageReport, ImageVuln, ScanStore
from moray.controlplane.vulndb.importer import import_path
from moray.controlplane.vulndb.matcher import Matcher

log = logging.getLogger(__name__)

# ids in paths are checked against the database's 64-bit range (beyond it: 422, not 500)
Id = Annotated[int, PathParam(ge=0, le=2**63 - 1)]

P = "/api/v1"
SCAN_ACCESS: dict[tuple[str, str], str] = {
    ("POST", P + "/scan-jobs"): "write",
    ("GET", P + "/scan-jobs"): "read",
    ("POST", P + "/scan-jobs/claim"): "write",
    ("POST", P + "/scan-jobs/{job_id}/finish"): "write",
    ("POST", P + "/scan-jobs/{job_id}/extend"): "write",
    ("POST", P + "/scan-jobs/{job_id}/release"): "write",
    ("POST", P + "/scan-jobs/rescan-stale"): "write",
    ("GET", P + "/images"): "read",
    ("GET", P + "/images/{digest}/findings"): "read",
    ("GET", P + "/images/{digest}/sbom"): "read",
    ("GET", P + "/images/{digest}/verdicts"): "read",
    ("POST", P + "/images/{digest}/verdicts"): "write",
    ("GET", P + "/vulndb/status"): "read",
    ("POST", P + "/vulndb/match"): "read",
    ("POST", P + "/vulndb/import"): "write",
    ("GET", P + "/scan-registries"): "read",
    ("POST", P + "/scan-registries"): "write",
    ("DELETE", P + "/scan-registries/{registry_id}"): "write",
    ("POST", P + "/scan-registries/{registry_id}/run"): "write",
    ("GET", P + "/scan-images"): "read",
    ("POST", P + "/scan-images"): "write",
    ("DELETE", P + "/scan-images/{image_id}"): "write",
}

MAX_IMPORT_BYTES = 64 << 20


class JobIn(BaseModel):
    image: str = Field(min_length=1, max_length=1024)
    tenant: str | None = Field(None, min_length=1, max_length=128,
                               description="whose scan (default: the caller's tenant, else "
                               "'default'); the image found becomes that tenant's")
    policy: str = Field("", description="ImageAssurancePolicy document (YAML), optional")
    insecure: bool = Field(False, description="plain HTTP (loopback registries only)")
    credentials: str = Field("", max_length=1024,
                             description="'', env:NAME or file:/path, resolved by the worker")


class LeaseIn(BaseModel):
    worker: str = Field(min_length=1, max_length=256)
    lease_seconds: float = Field(600.0, gt=0, le=86400)


class ReleaseIn(BaseModel):
    worker: str = Field(min_length=1, max_length=256)


class RegistryIn(BaseModel):
    registry: str = Field(min_length=1, max_length=300, description="host[:port]")
    tenant: str | None = Field(None, min_length=1, max_length=128,
                               description="default: the caller's tenant, else 'default'")
    repositories: list[str] = Field([], max_length=10000,
                                    description="only these repositories ([]: the catalog)")
    credentials: str = Field("", max_length=1024,
                             description="'', env:NAME or file:/path (never the secret)")
    insecure: bool = Field(False, description="plain HTTP (loopback registries only)")
    interval_seconds: float = Field(3600.0, ge=1, le=30 * 86400)
    policy: str = Field("", description="ImageAssurancePolicy document (YAML), optional")


class ImageIn(BaseModel):
    image: str = Field(min_length=1, max_length=1024)
    tenant: str | None = Field(None, min_length=1, max_length=128)
    credentials: str = Field("", max_length=1024)
    insecure: bool = False
    interval_seconds: float = Field(86400.0, ge=1, le=30 * 86400)
    policy: str = ""


class ImportIn(BaseModel):
    files: dict[str, str] = Field(description="file name -> content (OSV, Debian tracker or "
                                              "Alpine secdb JSON/YAML)", max_length=100_000)


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


class VulnIn(BaseModel):
    id: str = Field(min_length=1, max_length=256)
    severity: str = Field("unknown", max_length=32)
    package: str = Field("", max_length=512)
    version: str = Field("", max_length=256)
    fixed_version: str = Field("", max_length=256)
    aliases: list[str] = Field([], max_length=64)


class ReportIn(BaseModel):
    secrets: list[dict[str, Any]] = Field([], max_length=100_000,
                                          description="rule, title, severity, path, line, "
                                          "layer, deleted_later (any matched text is dropped)")
    malware: list[dict[str, Any]] = Field([], max_length=100_000)
    sbom: str = Field("", max_length=MAX_SBOM, description="CycloneDX JSON")


class VerdictIn(BaseModel):
    image: str
    policy: str
    passed: bool
    reasons: list[str] = []
    vulndb_generation: int | None = Field(
        None, ge=0, le=2**31 - 1,
        description="generation the scan was matched against (default: current)")
    vulnerabilities: list[VulnIn] | None = Field(
        None, max_length=200_000,
        description="the image's findings (replace those stored for the digest)")
    config_digest: str = Field(
        "", max_length=128, pattern=r"^(sha256:[0-9a-f]{64})?$",
        description="the image's config digest (docker's image ID), for the agents' list")
    report: ReportIn | None = Field(
        None, description="secrets, malware and SBOM (replace those stored for the digest)")
    job_id: int | None = Field(
        None, ge=0, le=2**63 - 1,
        description="the scan job it is the verdict of: the image becomes its tenant's "
        "(null: the tenants with a job of this image queued or leased)")


def _checked(check: Callable[[], object]) -> None:
    try:
        check()
    except ScanError as err:
        raise HTTPException(422, str(err)) from err


Audit = Callable[[Any, str, str, dict[str, Any]], None]


def scan_router(  # noqa: PLR0915 - the route table: one short function per endpoint
        store: ScanStore, authorize: Callable[[str, str], Callable[..., Any]],
        on_change: Callable[[], None] | None = None, audit: Audit | None = None) -> APIRouter:
    """``audit(principal, action, target, detail)`` records registrations and imports;
    ``principal`` is what ``authorize``'s dependency returned."""
    router = APIRouter()

    def dep(method: str, path: str) -> Any:
        return Depends(authorize(method, path))

    def changed(who: Any, action: str, target: str, detail: dict[str, Any]) -> None:
        if audit is not None:
            audit(who, action, target, detail)
        if on_change is not None:
            on_change()

    @router.post(P + "/scan-jobs")
    def enqueue(body: JobIn,
                who: Annotated[Any, dep("POST", P + "/scan-jobs")]) -> dict[str, int]:
        tenant = target(who, body.tenant)
        _checked(lambda: (check_policy(body.policy),
                          credentials.check_reference(body.credentials)))
        return {"id": store.enqueue_scan(body.image, body.policy, insecure=body.insecure,
                                         credentials=body.credentials, tenant=tenant)}

    @router.get(P + "/scan-jobs")
    def jobs(who: Annotated[Any, dep("GET", P + "/scan-jobs")], status: str | None = None,
             tenant: str | None = None,
             limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> list[dict[str, Any]]:
        return store.jobs(status=status, limit=limit, tenant=scope(who, tenant))

    # The scan workers' endpoints (claim, extend, release, finish, verdicts, rescans) and
    # the import of the shared vulnerability data need a global principal: a job carries
    # its tenant's image names and credential references, and a verdict is shared by
    # every tenant that has the image (a tenant's token must not write another's).
    @router.post(P + "/scan-jobs/claim", response_model=None)
    def claim(body: ClaimIn, who: Annotated[Any, dep("POST", P + "/scan-jobs/claim")]
              ) -> dict[str, Any] | Response:
        require_global(who, "claiming scan jobs")
        job = store.claim_scan(body.worker, body.lease_seconds)
        if job is None:
            return Response(status_code=204)
        return {"id": job.id, "image": job.image, "policy": job.policy, "attempts": job.attempts,
                "insecure": job.insecure, "credentials": job.credentials}

    @router.post(P + "/scan-jobs/{job_id}/extend")
    def extend(job_id: Id, body: LeaseIn,
               who: Annotated[Any, dep("POST", P + "/scan-jobs/{job_id}/extend")]
               ) -> dict[str, bool]:
        require_global(who, "a scan worker's lease")
        return {"ok": store.extend_scan(job_id, body.worker, body.lease_seconds)}

    @router.post(P + "/scan-jobs/{job_id}/release")
    def release(job_id: Id, body: ReleaseIn,
                who: Annotated[Any, dep("POST", P + "/scan-jobs/{job_id}/release")]
                ) -> dict[str, bool]:
        require_global(who, "a scan worker's lease")
        return {"ok": store.release_scan(job_id, body.worker)}

    @router.post(P + "/scan-jobs/{job_id}/finish")
    def finish(job_id: Id, body: FinishIn,
               who: Annotated[Any, dep("POST", P + "/scan-jobs/{job_id}/finish")]
               ) -> dict[str, bool]:
        require_global(who, "finishing a scan job")
        return {"ok": store.finish_scan(job_id, body.worker, digest=body.digest,
                                        error=body.error)}

    @router.post(P + "/scan-jobs/rescan-stale")
    def rescan(who: Annotated[Any, dep("POST", P + "/scan-jobs/rescan-stale")]
               ) -> dict[str, int]:
        require_global(who, "queueing every tenant's rescans")
        return {"queued": store.enqueue_stale()}

    @router.get(P + "/images/{digest}/verdicts")
    def verdicts(digest: str, who: Annotated[Any, dep("GET", P + "/images/{digest}/verdicts")]
                 ) -> list[dict[str, Any]]:
        if not store.has_image(who.tenant, digest):
            return []       # as for an image nobody has scanned
        return [{"policy": v.policy, "passed": v.passed, "reasons": v.reasons,
                 "vulndb_generation": v.vulndb_generation, "image": v.image,
                 "created": v.created, "stale": v.vulndb_generation < store.generation()}
                for v in store.verdicts(digest)]

    @router.post(P + "/images/{digest}/verdicts")
    def put_verdict(digest: str, body: VerdictIn,
                    who: Annotated[Any, dep("POST", P + "/images/{digest}/verdicts")]
                    ) -> dict[str, bool]:
        require_global(who, "recording a verdict")
        vulns = None if body.vulnerabilities is None else [
            ImageVuln(v.id, v.severity, v.package, v.version, v.fixed_version,
                      tuple(a[:256] for a in v.aliases)) for v in body.vulnerabilities]
        report = None if body.report is None else ImageReport(
            clean_findings(body.report.secrets, SECRET_FIELDS),
            clean_findings(body.report.malware, MALWARE_FIELDS), body.report.sbom)
        store.record_verdict(digest, body.image, body.policy, body.passed, body.reasons,
                             body.vulndb_generation, vulnerabilities=vulns,
                             config_digest=body.config_digest, job_id=body.job_id,
                             report=report)
        return {"ok": True}

    @router.get(P + "/images")
    def image_list(who: Annotated[Any, dep("GET", P + "/images")],
                   tenant: str | None = None,
                   page: Annotated[int, Query(ge=0, le=1)] = 0,
                   after: Annotated[str | None, Query(max_length=128)] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                   name: Annotated[str, Query(max_length=256)] = "",
                   verdict: Annotated[Literal["", "pass", "fail"], Query()] = "",
                   ) -> list[dict[str, Any]] | dict[str, Any]:
        """Every image with a verdict that the principal's tenant (or ``tenant``) brought
        in, with its verdicts and finding counts (a list, by reference); with ``page=1``
        or ``after`` (a digest), a keyset page of the console's images page:
        ``{"images": [...at most limit...], "next": <digest to pass as after> | null}``,
        filtered by ``name`` (the reference contains it) and ``verdict``."""
        scoped = scope(who, tenant)
        if not page and after is None:
            return store.image_summaries(scoped)
        rows, more = store.image_page(scoped, after=after, limit=limit, name=name,
                                      passed=None if not verdict else verdict == "pass")
        return {"images": rows, "next": more}

    @router.get(P + "/images/{digest}/findings")
    def image_findings(digest: str, who: Annotated[Any, dep(
            "GET", P + "/images/{digest}/findings")]) -> dict[str, Any]:
        """Secret findings (rule, file, line: never the matched text) and malware findings
        of the image's last scan with a report; 404 when it has none (or it is another
        tenant's)."""
        report = store.report(digest) if store.has_image(who.tenant, digest) else None
        if report is None:
            raise hidden(f"report for {digest}")
        return {**report.findings(), "sbom": bool(report.sbom)}

    @router.get(P + "/images/{digest}/sbom")
    def image_sbom(digest: str, who: Annotated[Any, dep("GET", P + "/images/{digest}/sbom")]
                   ) -> Response:
        """The image's CycloneDX SBOM (JSON, as an attachment)."""
        report = store.report(digest) if store.has_image(who.tenant, digest) else None
        if report is None or not report.sbom:
            raise hidden(f"SBOM for {digest}")
        name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-"
                       for c in digest)[:80]
        # the SBOM holds the image's package names (its author's strings): a download,
        # never a document the browser would render or sniff
        return Response(report.sbom, media_type="application/vnd.cyclonedx+json",
                        headers={"Content-Disposition":
                                 f'attachment; filename="{name}.cdx.json"',
                                 "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": "default-src 'none'; sandbox"})

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
             "summary": f.summary, "source": f.source, "cvss_score": f.cvss_score,
             "severity_source": f.severity_source}
            for f in found]}

    @router.get(P + "/vulndb/status")
    def status(_: Annotated[Any, dep("GET", P + "/vulndb/status")]) -> dict[str, Any]:
        return store.status()

    @router.post(P + "/vulndb/import")
    def import_files(body: ImportIn, who: Annotated[Any, dep("POST", P + "/vulndb/import")]
                     ) -> dict[str, Any]:
        """Import advisory files sent in the request (the server reads no path it is
        given); the scheduler then queues rescans of images with stale verdicts."""
        require_global(who, "importing vulnerability data")
        if sum(len(c) for c in body.files.values()) > MAX_IMPORT_BYTES:
            raise HTTPException(413, f"more than {MAX_IMPORT_BYTES} bytes")
        with tempfile.TemporaryDirectory(prefix="moray-import-") as tmp:
            for n, (name, content) in enumerate(sorted(body.files.items())):
                base = PurePosixPath(name).name
                if not base.endswith((".json", ".yaml", ".yml")):
                    raise HTTPException(422, f"{name}: expected .json, .yaml or .yml")
                (Path(tmp) / f"{n:06d}-{base}").write_text(content)
            report = import_path(Path(tmp), store)
        changed(who, "vulndb.import", f"{len(body.files)} files",
                {"records": report.records, "skipped": report.skipped})
        return {"records": report.records, "rows": report.rows, "skipped": report.skipped,
                "errors": [e.replace(tmp, "") for e in report.errors[:100]],
                "generation": store.generation()}

    @router.get(P + "/scan-registries")
    def registries(who: Annotated[Any, dep("GET", P + "/scan-registries")],
                   tenant: str | None = None) -> list[dict[str, Any]]:
        return [r.as_dict() for r in store.registries(scope(who, tenant))]

    @router.post(P + "/scan-registries", status_code=201)
    def add_registry(body: RegistryIn,
                     who: Annotated[Any, dep("POST", P + "/scan-registries")]
                     ) -> dict[str, Any]:
        tenant = target(who, body.tenant)
        _checked(lambda: (check_registry(body.registry, body.insecure),
                          check_policy(body.policy),
                          credentials.check_reference(body.credentials)))
        same = already_registered(store, body.registry, body.repositories, tenant=tenant)
        if same is not None:
            raise HTTPException(409, f"{body.registry} with these repositories is registered "
                                f"already (id {same})")
        reg = store.add_registry(body.registry, repositories=body.repositories,
                                 credentials=body.credentials, insecure=body.insecure,
                                 interval_seconds=body.interval_seconds, policy=body.policy,
                                 tenant=tenant)
        changed(who, "scan_registry.add", reg.registry, reg.as_dict())
        return reg.as_dict()

    @router.delete(P + "/scan-registries/{registry_id}")
    def remove_registry(registry_id: Id, who: Annotated[Any, dep(
            "DELETE", P + "/scan-registries/{registry_id}")]) -> dict[str, bool]:
        if not store.remove_registry(registry_id, who.tenant):
            raise hidden(f"registry {registry_id}")
        changed(who, "scan_registry.remove", str(registry_id), {})
        return {"ok": True}

    @router.post(P + "/scan-registries/{registry_id}/run")
    def run_registry(registry_id: Id, who: Annotated[Any, dep(
            "POST", P + "/scan-registries/{registry_id}/run")]) -> dict[str, bool]:
        if not store.run_registry_now(registry_id, who.tenant):
            raise hidden(f"registry {registry_id}")
        changed(who, "scan_registry.run", str(registry_id), {})
        return {"ok": True}

    @router.get(P + "/scan-images")
    def images(who: Annotated[Any, dep("GET", P + "/scan-images")],
               tenant: str | None = None) -> list[dict[str, Any]]:
        return [i.as_dict() for i in store.images(scope(who, tenant))]

    @router.post(P + "/scan-images", status_code=201)
    def add_image(body: ImageIn,
                  who: Annotated[Any, dep("POST", P + "/scan-images")]) -> dict[str, Any]:
        tenant = target(who, body.tenant)
        _checked(lambda: (check_image(body.image, body.insecure), check_policy(body.policy),
                          credentials.check_reference(body.credentials)))
        same = already_registered(store, image=body.image, tenant=tenant)
        if same is not None:
            raise HTTPException(409, f"{body.image} is registered already (id {same})")
        img = store.add_image(body.image, credentials=body.credentials, insecure=body.insecure,
                              interval_seconds=body.interval_seconds, policy=body.policy,
                              tenant=tenant)
        changed(who, "scan_image.add", img.image, img.as_dict())
        return img.as_dict()

    @router.delete(P + "/scan-images/{image_id}")
    def remove_image(image_id: Id, who: Annotated[Any, dep(
            "DELETE", P + "/scan-images/{image_id}")]) -> dict[str, bool]:
        if not store.remove_image(image_id, who.tenant):
            raise hidden(f"image {image_id}")
        changed(who, "scan_image.remove", str(image_id), {})
        return {"ok": True}

    return router
