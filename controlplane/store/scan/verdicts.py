"""Image assurance verdicts (``image_verdict``): one row per (image digest, policy),
overwritten by each evaluation, stamped with the vulndb generation of the data it was
matched against (older than the current generation = stale, see ``jobs.enqueue_stale``).

The vulnerabilities the verdict was made on (``image_vuln``) are replaced in the same
transaction when the caller passes them: one row per id and alias of each finding, so the
workload inventory can answer "which workloads run an image with CVE-X".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, delete, insert, select

from moray.controlplane.store.scan.base import ScanStoreBase, locked
from moray.controlplane.store.scanmodels import image_verdict, image_vuln

if TYPE_CHECKING:
    from moray.controlplane.scanner.engine.model import ScanResult


@dataclass(frozen=True, slots=True)
class Verdict:
    image_digest: str
    policy: str
    passed: bool
    reasons: list[str]
    vulndb_generation: int
    image: str
    created: float


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
                  _V.image, _V.created)


def _verdict(r: Any) -> Verdict:
    return Verdict(r[0], r[1], bool(r[2]), json.loads(r[3]), r[4], r[5], r[6])


class Verdicts(ScanStoreBase):
    @locked
    def put_verdict(self, v: Verdict) -> None:
        row = {"passed": v.passed, "reasons": json.dumps(v.reasons),
               "vulndb_generation": v.vulndb_generation, "image": v.image,
               "created": v.created}
        with self._conn() as c:
            c.execute(self._insert(image_verdict)
                      .values(image_digest=v.image_digest, policy=v.policy, **row)
                      .on_conflict_do_update(index_elements=["image_digest", "policy"],
                                             set_=row))

    @locked
    def record_verdict(self, image_digest: str, image: str, policy: str, passed: bool,
                       reasons: list[str], generation: int | None = None, *,
                       vulnerabilities: Sequence[ImageVuln] | None = None) -> Verdict:
        """Store a verdict stamped with the vulndb generation it was matched against
        (``generation``, e.g. read before the scan began; default: the current one);
        with ``vulnerabilities``, the image's findings replace those stored before."""
        with self.transaction():
            current = self.generation()
            gen = current if generation is None else min(generation, current)
            verdict = Verdict(image_digest, policy, passed, reasons, gen, image, self._clock())
            self.put_verdict(verdict)
            if vulnerabilities is not None:
                self.put_vulnerabilities(image_digest, vulnerabilities)
        return verdict

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
