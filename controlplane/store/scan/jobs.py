"""The scan job queue (``scan_job``).

A job is queued by ``enqueue_scan`` (by a person, the scheduler, or ``enqueue_stale``
after a vulndb import); a second enqueue of a job that is queued or leased returns the
existing one (a partial unique index on ``job_key``). It is leased to one worker at a
time by ``claim_scan`` (an expired lease is claimable again, up to ``max_attempts``; then
the job fails), kept by ``extend_scan``, given back by ``release_scan``, closed by
``finish_scan``. Each job remembers the vulndb generation it was queued at, so a stale
image is retried once per generation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, and_, cast, exists, func, literal, or_, select, update

from moray.api.tenants import DEFAULT_TENANT
from moray.controlplane.store.scan.base import ScanStoreBase, generation_value, locked
from moray.controlplane.store.scanmodels import image_verdict, scan_job

ACTIVE = ("queued", "running")


@dataclass(frozen=True, slots=True)
class ScanJob:
    id: int
    image: str
    policy: str  # policy document (YAML text), "" for none
    attempts: int
    insecure: bool = False  # plain HTTP to a loopback registry
    credentials: str = ""   # a reference the worker resolves (scanner.service.credentials)


def job_key(image: str, policy: str, insecure: bool, credentials: str,
            tenant: str = DEFAULT_TENANT) -> str:
    """What makes two jobs the same job (at most one of them queued or leased): two
    tenants' jobs are never the same (one tenant must not learn another queued it)."""
    parts = (image, policy, "1" if insecure else "0", credentials)
    raw = "\0".join(parts if tenant == DEFAULT_TENANT else (*parts, tenant))
    return hashlib.sha256(raw.encode()).hexdigest()


_J = scan_job.c


class ScanJobs(ScanStoreBase):
    @locked
    def enqueue_scan(self, image: str, policy: str = "", *, insecure: bool = False,
                     credentials: str = "", tenant: str = DEFAULT_TENANT) -> int:
        """Queue a scan unless the same job is already queued or leased (its id is returned
        then); atomic across processes and servers (partial unique index on job_key).
        ``tenant``: whose job it is (the digest it finds becomes that tenant's image)."""
        key = job_key(image, policy, insecure, credentials, tenant)
        now = self._clock()
        with self._conn() as c:
            job_id = c.scalar(self._insert(scan_job).values(
                tenant=tenant, image=image, policy=policy, status="queued", created=now,
                updated=now,
                insecure=insecure, credentials=credentials, job_key=key,
                generation=generation_value()).on_conflict_do_nothing().returning(_J.id))
            if job_id is None:
                job_id = c.scalar(select(_J.id).where(_J.job_key == key,
                                                      _J.status.in_(ACTIVE)))
        if job_id is None:  # the other job closed between the two statements: queue again
            return self.enqueue_scan(image, policy, insecure=insecure, credentials=credentials,
                                     tenant=tenant)
        return int(job_id)

    @locked
    def claim_scan(self, worker: str, lease_seconds: float = 600.0,
                   max_attempts: int = 3) -> ScanJob | None:
        """Lease the oldest claimable job to ``worker``; atomic across processes (one UPDATE
        on SQLite; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, which SQLite leaves out)."""
        now = self._clock()
        expired = and_(_J.status == "running", _J.lease_until < now)
        q = scan_job.alias("claimable").c  # not correlated with the UPDATE's own scan_job
        oldest = (select(q.id).where(or_(q.status == "queued",
                                         and_(q.status == "running", q.lease_until < now)),
                                     q.attempts < max_attempts)
                  .order_by(q.id).limit(1).with_for_update(skip_locked=True)
                  .scalar_subquery())
        with self._conn() as c:
            c.execute(update(scan_job).where(expired, _J.attempts >= max_attempts).values(
                status="failed", updated=now,
                error=literal("lease expired ", Text) + cast(_J.attempts, Text) + " times"))
            row = c.execute(update(scan_job).where(_J.id == oldest).values(
                status="running", worker=worker, lease_until=now + lease_seconds,
                attempts=_J.attempts + 1, updated=now).returning(
                _J.id, _J.image, _J.policy, _J.attempts, _J.insecure, _J.credentials)).first()
        if row is None:
            return None
        return ScanJob(int(row[0]), row[1], row[2], int(row[3]), bool(row[4]), row[5])

    def _update_held(self, job_id: int, worker: str, values: dict[str, Any]) -> bool:
        """Change a job this worker holds; False when the lease was lost to another."""
        with self._conn() as c:
            return c.execute(update(scan_job).where(
                _J.id == job_id, _J.worker == worker, _J.status == "running")
                .values(values)).rowcount == 1

    @locked
    def extend_scan(self, job_id: int, worker: str, lease_seconds: float = 600.0) -> bool:
        """Keep a lease this worker holds for another ``lease_seconds``."""
        now = self._clock()
        return self._update_held(job_id, worker, {"lease_until": now + lease_seconds,
                                                  "updated": now})

    @locked
    def release_scan(self, job_id: int, worker: str) -> bool:
        """Give a leased job back unfinished (a worker shutting down): queued again, and the
        attempt does not count."""
        return self._update_held(job_id, worker, {
            "status": "queued", "worker": "", "lease_until": 0,
            "attempts": _J.attempts - 1, "updated": self._clock()})

    @locked
    def finish_scan(self, job_id: int, worker: str, *, digest: str = "",
                    error: str = "") -> bool:
        """Close a job this worker holds; False when the lease was lost to another worker.
        The digest it found becomes an image of the job's tenant (``image_tenant``)."""
        with self.transaction():
            done = self._update_held(job_id, worker, {
                "status": "failed" if error else "done", "digest": digest,
                "error": error[:2000], "updated": self._clock()})
            if done and digest and not error:
                with self._conn() as c:
                    tenant = c.scalar(select(_J.tenant).where(_J.id == job_id))
                    if tenant is not None:
                        self._link_images(c, tenant, [digest])
            return done

    @locked
    def jobs(self, *, status: str | None = None, limit: int = 10000,
             tenant: str | None = None) -> list[dict[str, Any]]:
        query = select(_J.id, _J.image, _J.status, _J.worker, _J.attempts, _J.digest,
                       _J.error, _J.updated, _J.tenant)
        if status:
            query = query.where(_J.status == status)
        if tenant is not None:
            query = query.where(_J.tenant == tenant)
        with self._conn() as c:
            rows = list(c.execute(query.order_by(_J.id.desc()).limit(limit)))
        keys = ("id", "image", "status", "worker", "attempts", "digest", "error", "updated",
                "tenant")
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]

    @locked
    def job_counts(self) -> dict[str, int]:
        with self._conn() as c:
            return {str(status): int(n) for status, n in c.execute(
                select(_J.status, func.count()).group_by(_J.status))}

    @locked
    def enqueue_stale(self) -> int:
        """Queue a rescan of every image whose verdict predates the current vulndb data and
        that has not been tried at the current data yet (a job enqueued at this generation,
        whatever came of it, counts as tried; a job still queued or leased is not doubled).
        The rescan repeats the image's last job (policy, registry options)."""
        gen = self.generation()
        v = image_verdict.c
        tried = exists().where(_J.image == v.image,
                               or_(_J.generation >= gen, _J.status.in_(ACTIVE)))
        # one query for the images to queue (the scheduler runs this every few seconds)
        with self._conn() as c:
            stale = [r[0] for r in c.execute(select(v.image).distinct()
                                             .where(v.vulndb_generation < gen, ~tried))]
        queued = 0
        for image in stale:
            with self._conn() as c:
                last = c.execute(select(_J.policy, _J.insecure, _J.credentials, _J.tenant)
                                 .where(_J.image == image).order_by(_J.id.desc())
                                 .limit(1)).first()
            policy, insecure, creds, tenant = (
                (last[0], bool(last[1]), last[2], last[3]) if last
                else ("", False, "", DEFAULT_TENANT))
            self.enqueue_scan(image, policy, insecure=insecure, credentials=creds,
                              tenant=tenant)
            queued += 1
        return queued
