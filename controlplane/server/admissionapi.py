"""What the admission webhook (`moray kube-enforcer`) reports, and the inventory it builds.

``POST /api/v1/admission/reviews``: a batch of the webhook's decisions. Each becomes an
audit entry (``admission.allow``, ``admission.deny``, ``admission.warn`` in monitor mode),
all of a batch in one transaction, and each review of a workload updates the inventory
(``ScanStore.record_reviews``; dry runs, excluded namespaces and pods owned by a
controller are audited, not inventoried). ``GET /api/v1/workloads?vulnerability=CVE-X``
lists the workloads that run an image with that vulnerability; ``GET
/api/v1/images/{digest}/vulnerabilities`` the findings stored with an image's verdict.
``ADMISSION_ACCESS`` gives each endpoint a role class, as ``SCAN_ACCESS`` does.
"""

# No `from __future__ import annotations`: FastAPI reads endpoint annotations at
# definition time and they refer to closures.

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from moray.controlplane.server.tenancy import scope, target
from moray.controlplane.store.cpstore import ControlPlaneStore
from moray.controlplane.store.scanstore import ScanStore, WorkloadImage, WorkloadReview

P = "/api/v1"
ADMISSION_ACCESS: dict[tuple[str, str], str] = {
    ("POST", P + "/admission/reviews"): "write",
    ("GET", P + "/workloads"): "read",
    ("GET", P + "/images/{digest}/vulnerabilities"): "read",
}
MAX_BATCH = 1000

Name = Annotated[str, Field(max_length=253)]


class ReviewImageIn(BaseModel):
    container_type: Literal["container", "init", "ephemeral"]
    container: Name
    image: str = Field(max_length=1024)
    digest: str = Field("", max_length=128)
    verdict: str = Field(max_length=32)
    reasons: list[Annotated[str, Field(max_length=4096)]] = Field([], max_length=64)


class ReviewIn(BaseModel):
    uid: str = Field("", max_length=64)
    namespace: Name = ""
    kind: str = Field(min_length=1, max_length=64)
    name: Name = ""
    operation: str = Field(max_length=16)
    user: str = Field("", max_length=512)
    allowed: bool
    decision: Literal["allow", "deny", "warn"]
    mode: Literal["enforce", "monitor"] = "enforce"
    message: str = Field("", max_length=8192)
    dry_run: bool = False
    excluded: str = Field("", max_length=512, description="why the request was not checked")
    inventory: bool = Field(True, description="false: audit only (a pod a controller owns)")
    images: list[ReviewImageIn] = Field([], max_length=256)


class ReviewsIn(BaseModel):
    cluster: str = Field("default", min_length=1, max_length=253)
    reviews: list[ReviewIn] = Field(max_length=MAX_BATCH)


def admission_router(store: ControlPlaneStore, scans: ScanStore,
                     authorize: Callable[[str, str], Callable[..., Any]]) -> APIRouter:
    router = APIRouter()

    def dep(method: str, path: str) -> Any:
        return Depends(authorize(method, path))

    @router.post(P + "/admission/reviews")
    def reviews(body: ReviewsIn, who: Annotated[Any, dep("POST", P + "/admission/reviews")]
                ) -> dict[str, int]:
        audits: list[tuple[str, str, dict[str, Any]]] = []
        inventory: list[WorkloadReview] = []
        for r in body.reviews:
            detail = r.model_dump(exclude={"inventory"})
            detail["cluster"] = body.cluster
            audits.append((f"admission.{r.decision}",
                           f"{body.cluster}/{r.namespace}/{r.kind}/{r.name}", detail))
            if r.inventory and not r.dry_run and not r.excluded and r.name:
                inventory.append(WorkloadReview(
                    body.cluster, r.namespace, r.kind, r.name, r.uid, r.operation, r.allowed,
                    r.decision, tuple(WorkloadImage(i.container_type, i.container, i.image,
                                                    i.digest, i.verdict, tuple(i.reasons))
                                      for i in r.images)))
        # a global token's reviews are the default tenant's cluster
        tenant = target(who)
        store.record_audits(who.actor, audits, tenant=tenant)
        scans.record_reviews(inventory, tenant)
        return {"audited": len(audits), "inventoried": len(inventory)}

    @router.get(P + "/workloads")
    def workloads(who: Annotated[Any, dep("GET", P + "/workloads")],
                  vulnerability: Annotated[str | None, Query(max_length=256)] = None,
                  namespace: Annotated[str | None, Query(max_length=253)] = None,
                  cluster: Annotated[str | None, Query(max_length=253)] = None,
                  include_denied: bool = False, tenant: str | None = None,
                  limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> list[dict[str, Any]]:
        return scans.workloads(vulnerability=vulnerability, namespace=namespace,
                               cluster=cluster, include_denied=include_denied, limit=limit,
                               tenant=scope(who, tenant))

    @router.get(P + "/images/{digest}/vulnerabilities")
    def vulnerabilities(digest: str, who: Annotated[Any, dep(
            "GET", P + "/images/{digest}/vulnerabilities")]) -> list[dict[str, Any]]:
        if not scans.has_image(who.tenant, digest):
            return []       # as for an image nobody has scanned
        return [v.as_dict() for v in scans.vulnerabilities(digest)]

    return router
