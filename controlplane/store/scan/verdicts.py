"""Image assurance verdicts (``image_verdict``): one row per (image digest, policy),
overwritten by each evaluation, stamped with the vulndb generation of the data it was
matched against (older than the current generation = stale, see ``jobs.enqueue_stale``).

The vulnerabilities the verdict was made on (``image_vuln``) are replaced in the same
transaction when the caller passes them: one row per id and alias of each finding, so the
workload inventory can answer "which workloads run an image with CVE-X". So is the image's
report (``image_report``: secret and malware findings, CycloneDX SBOM) the console shows;
a secret finding keeps its rule, file and line, never the text it matched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, case, delete, distinct, func, insert, select, tuple_

from moray.api.tenants import DEFAULT_TENANT
from moray.controlplane.store.scan.base import ScanStoreBase, locked
from moray.controlplane.store.scanmodels import image_report as image_report_table
from moray.controlplane.store.scanmodels import (
    image_tenant,
    image_verdict,
    image_vuln,
    kube_workload,
    kube_workload_image,
    scan_image,
)

if TYPE_CHECKING:
    from moray.controlplane.scanner.engine.model import ScanResult


VERDICTS_SERIAL = "verdicts_serial"   # scanstore_meta: bumped by each verdict written
MAX_SBOM = 4 << 20     # a larger SBOM is not kept (the verdict's request must stay < 8 MiB)
MAX_FINDINGS = 10000   # secret or malware findings kept per image
MAX_IMAGE = 512        # characters of an image reference kept (it is in an index)


@dataclass(frozen=True, slots=True)
class Verdict:
    image_digest: str
    policy: str
    passed: bool
    reasons: list[str]
    vulndb_generation: int
    image: str
    created: float
    config_digest: str = ""     # the image's config digest (docker/podman image ID)


@dataclass(frozen=True, slots=True)
class ImageVuln:
    """One vulnerability finding of an image (``id`` and ``aliases`` name the same one)."""

    id: str
    severity: str
    package: str
    version: str
    fixed_version: str = ""
    aliases: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity, "package": self.package,
                "version": self.version, "fixed_version": self.fixed_version,
                "aliases": list(self.aliases)}


@dataclass(frozen=True, slots=True)
class ImageReport:
    """What a scan found besides vulnerabilities: secret findings (rule, title, severity,
    path, line, layer, deleted_later: never the matched text) and malware findings (rule,
    path, layer, sha256, severity, deleted_later); ``sbom``: CycloneDX JSON, '' if none."""

    secrets: list[dict[str, Any]]
    malware: list[dict[str, Any]]
    sbom: str = ""

    def findings(self) -> dict[str, Any]:
        return {"secrets": self.secrets, "malware": self.malware}


SECRET_FIELDS = ("rule", "title", "severity", "path", "line", "layer", "deleted_later")
MALWARE_FIELDS = ("rule", "path", "layer", "sha256", "severity", "deleted_later")


def clean_findings(items: Iterable[dict[str, Any]], fields: tuple[str, ...]
                   ) -> list[dict[str, Any]]:
    """Only the named fields of each finding (a secret's ``masked`` text is dropped here,
    whoever sent it), strings cut to 4096 characters, at most MAX_FINDINGS."""
    out = []
    for item in list(items)[:MAX_FINDINGS]:
        row = {}
        for f in fields:
            v = item.get(f)
            row[f] = v[:4096] if isinstance(v, str) else v
        out.append(row)
    return out


def image_report(result: ScanResult) -> ImageReport:
    """The report of a scan result, as stored beside its verdict (the SBOM is left out
    when it is larger than MAX_SBOM)."""
    from moray.controlplane.scanner.engine.report import to_cyclonedx

    secrets = [{"rule": s.rule, "title": s.title, "severity": str(s.severity),
                "path": s.path, "line": s.line, "layer": s.layer,
                "deleted_later": s.deleted_later} for s in result.secrets]
    malware = [{"rule": m.rule, "path": m.path, "layer": m.layer, "sha256": m.sha256,
                "severity": str(m.severity), "deleted_later": m.deleted_later}
               for m in result.malware]
    sbom = to_cyclonedx(result)
    return ImageReport(clean_findings(secrets, SECRET_FIELDS),
                       clean_findings(malware, MALWARE_FIELDS),
                       sbom if len(sbom) <= MAX_SBOM else "")


def image_vulns(result: ScanResult) -> list[ImageVuln]:
    """The vulnerability findings of a scan result, as stored beside its verdict."""
    return [ImageVuln(v.id, str(v.severity), v.package.name, v.package.version,
                      v.fixed_version, tuple(v.aliases)) for v in result.vulnerabilities]


def _vuln_rows(digest: str, vulns: Iterable[ImageVuln]) -> list[dict[str, str]]:
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for v in vulns:
        for name in (v.id, *v.aliases):
            key = (name[:256], v.package[:512], v.version[:256])
            rows.setdefault(key, {
                "image_digest": digest, "vuln_id": key[0], "advisory": v.id[:256],
                "severity": v.severity[:32], "package": key[1], "version": key[2],
                "fixed_version": v.fixed_version[:256]})
    return list(rows.values())


_V = image_verdict.c
_U = image_vuln.c


def _select() -> Select[Any]:
    return select(_V.image_digest, _V.policy, _V.passed, _V.reasons, _V.vulndb_generation,
                  _V.image, _V.created, _V.config_digest)


def _verdict(r: Any) -> Verdict:
    return Verdict(r[0], r[1], bool(r[2]), json.loads(r[3]), r[4], r[5], r[6], r[7])


class Verdicts(ScanStoreBase):
    @locked
    def put_verdict(self, v: Verdict) -> None:
        row = {"passed": v.passed, "reasons": json.dumps(v.reasons),
               "vulndb_generation": v.vulndb_generation, "image": v.image[:MAX_IMAGE],
               "created": v.created, "config_digest": v.config_digest}
        with self._conn() as c:
            c.execute(self._insert(image_verdict)
                      .values(image_digest=v.image_digest, policy=v.policy, **row)
                      .on_conflict_do_update(index_elements=["image_digest", "policy"],
                                             set_=row))

    @locked
    def record_verdict(self, image_digest: str, image: str, policy: str, passed: bool,
                       reasons: list[str], generation: int | None = None, *,
                       vulnerabilities: Sequence[ImageVuln] | None = None,
                       config_digest: str = "", job_id: int | None = None,
                       report: ImageReport | None = None) -> Verdict:
        """Store a verdict stamped with the vulndb generation it was matched against
        (``generation``, e.g. read before the scan began; default: the current one);
        with ``vulnerabilities``, the image's findings replace those stored before.
        ``config_digest``: the image's config digest (kept if '' and one is stored);
        ``report`` (secrets, malware, SBOM) replaces the one stored before.
        Then ``on_verdict`` is called (the server's change watcher: the image-verdict
        list agents hold), after the commit; on PostgreSQL a ``verdicts`` notification
        goes out in the transaction for the other server processes.

        The image becomes an image of the tenant of the scan job ``job_id`` (without
        one: of the tenants with a job of ``image`` queued or leased) in the same
        transaction, before any tenant's image-verdict list can carry it: until then it
        would count as nobody's, the default tenant's."""
        with self.transaction():
            self._link_scanned(image, image_digest, job_id)
            current = self.generation()
            gen = current if generation is None else min(generation, current)
            if not config_digest:
                config_digest = self._config_digest(image_digest)
            verdict = Verdict(image_digest, policy, passed, reasons, gen, image, self._clock(),
                              config_digest[:128])
            self.put_verdict(verdict)
            with self._conn() as c:     # the image-verdict list's version: one per write
                self._bump(c, VERDICTS_SERIAL)
            if vulnerabilities is not None:
                self.put_vulnerabilities(image_digest, vulnerabilities)
            if report is not None:
                self.put_report(image_digest, report)
            self._notify_verdicts()
        if self.on_verdict is not None:
            self.on_verdict()
        return verdict

    @locked
    def _config_digest(self, image_digest: str) -> str:
        with self._conn() as c:
            row = c.execute(select(_V.config_digest).where(
                _V.image_digest == image_digest, _V.config_digest != "").limit(1)).first()
        return str(row[0]) if row else ""

    @locked
    def _notify_verdicts(self) -> None:
        if self._postgres:
            from moray.controlplane.store.cpstore import NOTIFY_CHANNEL

            with self._conn() as c:
                c.execute(select(func.pg_notify(NOTIFY_CHANNEL, "verdicts")))

    @locked
    def verdicts_version(self) -> tuple[int, int]:
        """(verdict writes so far, how many verdicts): it moves whenever a verdict is
        written, in the verdict's transaction (the image-verdict list's version is the
        first: the same in every server process on the database)."""
        with self._conn() as c:
            count = c.scalar(select(func.count()).select_from(image_verdict))
        return self._meta_int(VERDICTS_SERIAL), int(count or 0)

    @locked
    def put_vulnerabilities(self, image_digest: str, vulns: Sequence[ImageVuln]) -> None:
        rows = _vuln_rows(image_digest, vulns)
        with self._conn() as c:
            c.execute(delete(image_vuln).where(_U.image_digest == image_digest))
            if rows:
                c.execute(insert(image_vuln), rows)

    @locked
    def vulnerabilities(self, image_digest: str) -> list[ImageVuln]:
        """The findings of the image's last verdict (each once, aliases gathered)."""
        found: dict[tuple[str, str, str], ImageVuln] = {}
        aliases: dict[tuple[str, str, str], list[str]] = {}
        with self._conn() as c:
            for r in c.execute(select(_U.vuln_id, _U.advisory, _U.severity, _U.package,
                                      _U.version, _U.fixed_version)
                               .where(_U.image_digest == image_digest)
                               .order_by(_U.advisory, _U.package, _U.vuln_id)):
                key = (r[1], r[3], r[4])
                found.setdefault(key, ImageVuln(r[1], r[2], r[3], r[4], r[5]))
                if r[0] != r[1]:
                    aliases.setdefault(key, []).append(r[0])
        return [ImageVuln(v.id, v.severity, v.package, v.version, v.fixed_version,
                          tuple(aliases.get(k, ()))) for k, v in found.items()]

    @locked
    def verdicts(self, image_digest: str) -> list[Verdict]:
        with self._conn() as c:
            rows = c.execute(_select().where(_V.image_digest == image_digest)
                             .order_by(_V.policy))
            return [_verdict(r) for r in rows]

    @locked
    def all_verdicts(self) -> list[Verdict]:
        with self._conn() as c:
            return [_verdict(r) for r in c.execute(_select().order_by(_V.image, _V.policy))]

    @locked
    def put_report(self, image_digest: str, report: ImageReport) -> None:
        row = {"findings": json.dumps(report.findings()), "secrets": len(report.secrets),
               "malware": len(report.malware), "sbom": report.sbom, "created": self._clock()}
        with self._conn() as c:
            c.execute(self._insert(image_report_table).values(image_digest=image_digest, **row)
                      .on_conflict_do_update(index_elements=["image_digest"], set_=row))

    @locked
    def report(self, image_digest: str) -> ImageReport | None:
        with self._conn() as c:
            row = c.execute(select(image_report_table.c.findings, image_report_table.c.sbom)
                            .where(image_report_table.c.image_digest == image_digest)).first()
        if row is None:
            return None
        found = json.loads(row[0])
        return ImageReport(found.get("secrets", []), found.get("malware", []), row[1])

    @locked
    def image_summaries(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every image with a verdict (``tenant``: of that tenant only, as ``has_image``
        decides): digest, image, config digest, its verdicts, how many vulnerabilities of
        each severity, secret and malware findings (counts)."""
        images: dict[str, dict[str, Any]] = {}
        current = self.generation()
        owners = self.image_tenants() if tenant is not None else {}
        mine: set[str] = owners.get(tenant or "", set())
        owned: set[str] = set().union(*owners.values())

        def seen(digest: str) -> bool:
            return tenant is None or digest in mine or (
                digest not in owned and tenant == DEFAULT_TENANT)

        for v in self.all_verdicts():
            if not seen(v.image_digest):
                continue
            img = images.setdefault(v.image_digest, {
                "digest": v.image_digest, "image": v.image, "config_digest": v.config_digest,
                "scanned": v.created, "passed": True, "verdicts": [],
                "severities": {}, "secrets": 0, "malware": 0})
            img["verdicts"].append({"policy": v.policy, "passed": v.passed,
                                    "reasons": v.reasons, "created": v.created,
                                    "stale": v.vulndb_generation < current})
            img["passed"] = img["passed"] and v.passed
            img["scanned"] = max(img["scanned"], v.created)
        with self._conn() as c:
            for digest, severity, n in c.execute(
                    select(_U.image_digest, _U.severity,
                           func.count(func.distinct(_U.advisory + " " + _U.package)))
                    .group_by(_U.image_digest, _U.severity)):
                if digest in images:
                    images[digest]["severities"][severity] = int(n)
            r = image_report_table.c
            for digest, secrets, malware in c.execute(select(r.image_digest, r.secrets,
                                                             r.malware)):
                if digest in images:
                    images[digest]["secrets"] = int(secrets)
                    images[digest]["malware"] = int(malware)
        return sorted(images.values(), key=lambda i: (i["image"], i["digest"]))

    @locked
    def image_page(self, tenant: str | None = None, *, after: str | None = None,
                   limit: int = 50, name: str = "", passed: bool | None = None
                   ) -> tuple[list[dict[str, Any]], str | None]:
        """A keyset page of ``image_summaries``: images by reference (image, digest)
        after the image ``after`` (a digest), at most ``limit``, and the digest to pass as
        ``after`` for the next page (None: the last). ``name``: the reference contains it
        (case-insensitive); ``passed``: every policy's verdict passed (True) or one failed
        (False). One grouped scan of the (image, image_digest, passed) index that stops
        after ``limit`` images, then the page's verdicts, vulnerability counts and report
        counts by the page's digests (nothing is counted over the other images)."""
        t = image_tenant.c
        ok = func.min(case((_V.passed, 1), else_=0))
        query = (select(_V.image, _V.image_digest).group_by(_V.image, _V.image_digest)
                 .order_by(_V.image, _V.image_digest).limit(limit + 1))
        if tenant is not None:
            owned = select(t.image_digest).where(t.image_digest == _V.image_digest)
            mine = owned.where(t.tenant == tenant)
            query = query.where(mine.exists() | (~owned.exists())
                                if tenant == DEFAULT_TENANT else mine.exists())
        if name:
            query = query.where(func.lower(_V.image).contains(name.lower(), autoescape=True))
        if passed is not None:
            query = query.having(ok == (1 if passed else 0))
        if after is not None and not self.has_image(tenant, after):
            return [], None     # another tenant's image tells nothing, not even its place
        with self._conn() as c:
            if after is not None:
                mark = c.execute(select(_V.image).where(_V.image_digest == after)
                                 .order_by(_V.image).limit(1)).first()
                if mark is None:
                    return [], None
                query = query.where(tuple_(_V.image, _V.image_digest) > tuple_(mark[0], after))
            keys = [(str(r[0]), str(r[1])) for r in c.execute(query)]
            more = len(keys) > limit
            keys = keys[:limit]
            digests = [d for _, d in keys]
            verdicts: dict[str, list[Verdict]] = {}
            for r in c.execute(_select().where(_V.image_digest.in_(digests))
                               .order_by(_V.image_digest, _V.policy)):
                verdicts.setdefault(r[0], []).append(_verdict(r))
            severities: dict[str, dict[str, int]] = {}
            for digest, severity, n in c.execute(
                    select(_U.image_digest, _U.severity,
                           func.count(func.distinct(_U.advisory + " " + _U.package)))
                    .where(_U.image_digest.in_(digests))
                    .group_by(_U.image_digest, _U.severity)):
                severities.setdefault(digest, {})[severity] = int(n)
            rc = image_report_table.c
            reports = {d: (int(s), int(m)) for d, s, m in c.execute(
                select(rc.image_digest, rc.secrets, rc.malware)
                .where(rc.image_digest.in_(digests)))}
        current = self.generation()
        out = []
        for image, digest in keys:
            vs = verdicts.get(digest, [])
            secrets, malware = reports.get(digest, (0, 0))
            out.append({
                "digest": digest, "image": image,
                "config_digest": next((v.config_digest for v in vs if v.config_digest), ""),
                "scanned": max((v.created for v in vs), default=0.0),
                "passed": all(v.passed for v in vs),
                "verdicts": [{"policy": v.policy, "passed": v.passed, "reasons": v.reasons,
                              "created": v.created,
                              "stale": v.vulndb_generation < current} for v in vs],
                "severities": severities.get(digest, {}), "secrets": secrets,
                "malware": malware})
        return out, (keys[-1][1] if more and keys else None)

    def verdict_counts(self, tenant: str | None = None) -> dict[str, int]:
        """Images by verdict, for the console's overview: ``compliant`` (every policy's
        verdict passed), ``non-compliant`` (one failed), ``unscanned`` (a digest the
        admission webhook saw running with no verdict, or a scheduled image not scanned
        yet). Every tenant's: one grouped scan of ``image_verdict`` (its primary key),
        whatever the number of events; one tenant's: its own images (image_summaries)."""
        if tenant is not None:
            return self._tenant_verdict_counts(tenant)
        per_image = (select(func.min(case((_V.passed, 1), else_=0)).label("ok"))
                     .group_by(_V.image_digest).subquery())
        with self._conn() as c:
            counts = {int(ok): int(n) for ok, n in c.execute(
                select(per_image.c.ok, func.count()).group_by(per_image.c.ok))}
            seen = c.scalar(select(func.count(distinct(kube_workload_image.c.digest))).where(
                kube_workload_image.c.digest != "",
                kube_workload_image.c.digest.not_in(select(_V.image_digest)))) or 0
            waiting = c.scalar(select(func.count()).select_from(scan_image).where(
                scan_image.c.last_run.is_(None))) or 0
        return {"compliant": int(counts.get(1, 0)), "non-compliant": int(counts.get(0, 0)),
                "unscanned": int(seen) + int(waiting)}

    def _tenant_verdict_counts(self, tenant: str) -> dict[str, int]:
        images = self.image_summaries(tenant)
        passed = sum(1 for i in images if i["passed"])
        w, wi = kube_workload.c, kube_workload_image.c
        with self._conn() as c:
            seen = c.scalar(select(func.count(distinct(wi.digest))).select_from(
                kube_workload_image.join(kube_workload, w.id == wi.workload_id)).where(
                w.tenant == tenant, wi.digest != "",
                wi.digest.not_in(select(_V.image_digest)))) or 0
            waiting = c.scalar(select(func.count()).select_from(scan_image).where(
                scan_image.c.last_run.is_(None), scan_image.c.tenant == tenant)) or 0
        return {"compliant": passed, "non-compliant": len(images) - passed,
                "unscanned": int(seen) + int(waiting)}
