"""The workloads the admission webhook has seen (``kube_workload``, ``kube_workload_image``):
each admission review of a workload (``record_reviews``, in batches from `moray
kube-enforcer`) replaces its row and its containers' images, digests and verdicts; a
DELETE review removes it; a refused update of a known workload leaves it as it runs.
``workloads`` answers "which workloads run an image with CVE-X" by joining the images'
digests with the findings stored beside their verdicts (``image_vuln``), so a rescan
after new advisories changes the answer without another review.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update

from moray.api.tenants import DEFAULT_TENANT
from moray.controlplane.store.scan.base import ScanStoreBase, locked
from moray.controlplane.store.scanmodels import image_vuln, kube_workload, kube_workload_image


@dataclass(frozen=True, slots=True)
class WorkloadImage:
    container_type: str    # container, init, ephemeral
    container: str
    image: str
    digest: str            # "" when it could not be resolved
    verdict: str           # compliant, non-compliant, unregistered, unresolved, excluded
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkloadReview:
    cluster: str
    namespace: str
    kind: str
    name: str
    uid: str
    operation: str         # CREATE, UPDATE, DELETE
    allowed: bool
    decision: str          # allow, deny, warn (monitor mode)
    images: tuple[WorkloadImage, ...] = field(default=())


_W = kube_workload.c
_WI = kube_workload_image.c
_U = image_vuln.c


class Inventory(ScanStoreBase):
    @locked
    def record_reviews(self, reviews: Sequence[WorkloadReview],
                       tenant: str = DEFAULT_TENANT) -> None:
        """Apply a batch of reviews of ``tenant``'s clusters in one transaction, in order;
        the images' digests become the tenant's images."""
        now = self._clock()
        with self.transaction(), self._conn() as c:
            self._link_images(c, tenant, [i.digest for r in reviews for i in r.images
                                          if r.operation != "DELETE"])
            for r in reviews:
                key = and_(_W.tenant == tenant, _W.cluster == r.cluster,
                           _W.namespace == r.namespace, _W.kind == r.kind, _W.name == r.name)
                wid = c.scalar(select(_W.id).where(key))
                if r.operation == "DELETE":
                    if wid is not None:
                        c.execute(delete(kube_workload_image).where(_WI.workload_id == wid))
                        c.execute(delete(kube_workload).where(_W.id == wid))
                    continue
                if wid is not None and not r.allowed:
                    continue  # a refused update leaves the running version as it was
                row = {"uid": r.uid[:64], "operation": r.operation[:16], "allowed": r.allowed,
                       "decision": r.decision[:16], "last_seen": now}
                if wid is None:
                    wid = c.execute(insert(kube_workload).values(
                        tenant=tenant, cluster=r.cluster, namespace=r.namespace,
                        kind=r.kind, name=r.name,
                        first_seen=now, **row).returning(_W.id)).scalar_one()
                else:
                    c.execute(update(kube_workload).where(_W.id == wid).values(**row))
                    c.execute(delete(kube_workload_image).where(_WI.workload_id == wid))
                images = {(i.container_type, i.container): i for i in r.images}
                if images:
                    c.execute(insert(kube_workload_image), [
                        {"workload_id": wid, "container_type": i.container_type[:16],
                         "container": i.container[:253], "image": i.image,
                         "digest": i.digest[:128], "verdict": i.verdict[:32],
                         "reasons": json.dumps(list(i.reasons))} for i in images.values()])

    @locked
    def workloads(self, *, vulnerability: str | None = None, namespace: str | None = None,
                  cluster: str | None = None, include_denied: bool = False,
                  limit: int = 1000, tenant: str | None = None) -> list[dict[str, Any]]:
        """Workloads (allowed ones unless ``include_denied``), each with its images; with
        ``vulnerability``, only those running an image with that id (or alias), each
        image with the findings that matched."""
        q = select(_W.id, _W.cluster, _W.namespace, _W.kind, _W.name, _W.uid, _W.operation,
                   _W.allowed, _W.decision, _W.first_seen, _W.last_seen)
        if not include_denied:
            q = q.where(_W.allowed.is_(True))
        if tenant is not None:
            q = q.where(_W.tenant == tenant)
        if namespace is not None:
            q = q.where(_W.namespace == namespace)
        if cluster is not None:
            q = q.where(_W.cluster == cluster)
        if vulnerability is not None:
            hit = select(_U.image_digest).where(_U.vuln_id == vulnerability)
            q = q.where(_W.id.in_(select(_WI.workload_id).where(_WI.digest.in_(hit))))
        q = q.order_by(_W.cluster, _W.namespace, _W.kind, _W.name).limit(limit)
        with self._conn() as c:
            rows = c.execute(q).all()
            ids = [r[0] for r in rows]
            images: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
            digests: set[str] = set()
            if ids:
                for i in c.execute(select(_WI.workload_id, _WI.container_type, _WI.container,
                                          _WI.image, _WI.digest, _WI.verdict, _WI.reasons)
                                   .where(_WI.workload_id.in_(ids))
                                   .order_by(_WI.workload_id, _WI.container_type,
                                             _WI.container)):
                    images[i[0]].append({"container_type": i[1], "container": i[2],
                                         "image": i[3], "digest": i[4], "verdict": i[5],
                                         "reasons": json.loads(i[6])})
                    if i[4]:
                        digests.add(i[4])
            counts: dict[str, int] = {}
            matched: dict[str, list[dict[str, str]]] = {}
            if digests:
                counts = {str(d): int(n) for d, n in c.execute(
                    select(_U.image_digest, func.count(func.distinct(_U.advisory)))
                    .where(_U.image_digest.in_(digests)).group_by(_U.image_digest))}
                if vulnerability is not None:
                    for v in c.execute(select(_U.image_digest, _U.advisory, _U.severity,
                                              _U.package, _U.version, _U.fixed_version)
                                       .where(_U.image_digest.in_(digests),
                                              _U.vuln_id == vulnerability)):
                        matched.setdefault(v[0], []).append({
                            "id": v[1], "severity": v[2], "package": v[3],
                            "version": v[4], "fixed_version": v[5]})
        out = []
        for r in rows:
            imgs = images[r[0]]
            for img in imgs:
                img["vulnerabilities"] = counts.get(img["digest"], 0)
                if vulnerability is not None:
                    img["matched"] = matched.get(img["digest"], [])
            out.append({"cluster": r[1], "namespace": r[2], "kind": r[3], "name": r[4],
                        "uid": r[5], "operation": r[6], "allowed": bool(r[7]),
                        "decision": r[8], "first_seen": r[9], "last_seen": r[10],
                        "images": imgs})
        return out
