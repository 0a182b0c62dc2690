"""The vulnerability knowledge base: ``vuln_advisory`` (one row per advisory id, merged
across sources), ``vuln_alias`` (CVE <-> vendor ids), ``vuln_affected`` (what each
advisory says about each package) and ``vuln_import`` (one row per import run).

Rows are replaced per (source, origin record) on every import (``replace_origin``, inside
``transaction()``); ``record_import`` closes a run and, if it added records, bumps the
vulndb generation, which marks stored verdicts stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, union

from moray.controlplane.store.scan.base import GENERATION, ScanStoreBase, locked
from moray.controlplane.store.scanmodels import (
    vuln_advisory,
    vuln_affected,
    vuln_alias,
    vuln_import,
)


@dataclass(frozen=True, slots=True)
class AffectedRecord:
    advisory_id: str
    source: str
    origin: str  # the record the row came from (DSA id, secdb file), for replacement
    ecosystem: str
    release: str  # "" for language ecosystems, "debian:12", "debian:" = every release
    package: str
    status: str  # "affected" | "not_affected"
    ranges: list[dict[str, Any]]
    versions: list[str]
    fixed: str


@dataclass(frozen=True, slots=True)
class AdvisoryRecord:
    id: str
    aliases: list[str]
    summary: str
    severity: str
    cvss_score: float | None
    modified: str
    source: str


_AFFECTED = vuln_affected.c
_ADVISORY = vuln_advisory.c


class VulnData(ScanStoreBase):
    @locked
    def replace_origin(self, source: str, origin: str, advisories: Iterable[AdvisoryRecord],
                       rows: Iterable[AffectedRecord]) -> int:
        """Replace everything one source record contributed; call inside transaction()."""
        with self._conn() as c:
            c.execute(delete(vuln_affected).where(_AFFECTED.source == source,
                                                  _AFFECTED.origin == origin))
            for adv in advisories:
                self._upsert_advisory(c, adv)
            values = [{"advisory_id": r.advisory_id, "source": r.source, "origin": r.origin,
                       "ecosystem": r.ecosystem, "release": r.release, "package": r.package,
                       "status": r.status, "ranges": json.dumps(r.ranges),
                       "versions": json.dumps(r.versions), "fixed": r.fixed}
                      for r in rows]
            if values:
                c.execute(insert(vuln_affected), values)
        return len(values)

    def _upsert_advisory(self, c: Connection, adv: AdvisoryRecord) -> None:
        old = c.execute(select(_ADVISORY.aliases, _ADVISORY.summary, _ADVISORY.severity,
                               _ADVISORY.cvss_score, _ADVISORY.sources)
                        .where(_ADVISORY.id == adv.id)).first()
        aliases, summary, severity, score, sources = (
            set(adv.aliases), adv.summary, adv.severity, adv.cvss_score, {adv.source})
        if old:
            aliases |= set(json.loads(old[0]))
            summary = summary or old[1]
            if severity == "unknown":
                severity = old[2]
            score = score if score is not None else old[3]
            sources |= set(json.loads(old[4]))
        aliases.discard(adv.id)
        if aliases:
            c.execute(self._insert(vuln_alias).on_conflict_do_nothing(),
                      [{"alias": a, "advisory_id": adv.id} for a in sorted(aliases)])
        row = {"aliases": json.dumps(sorted(aliases)), "summary": summary,
               "severity": severity, "cvss_score": score, "modified": adv.modified,
               "sources": json.dumps(sorted(sources))}
        c.execute(self._insert(vuln_advisory).values(id=adv.id, **row)
                  .on_conflict_do_update(index_elements=["id"], set_=row))

    @locked
    def record_import(self, path: str, records: int, rows: int, skipped: int) -> None:
        with self._conn() as c:
            c.execute(insert(vuln_import).values(path=path, records=records, rows=rows,
                                                 skipped=skipped, imported_at=self._clock()))
            if records:
                self._bump(c, GENERATION)

    @locked
    def affected_for(self, ecosystem: str, packages: Iterable[str]) -> list[AffectedRecord]:
        names = sorted(set(packages))
        if not names:
            return []
        query = select(_AFFECTED.advisory_id, _AFFECTED.source, _AFFECTED.origin,
                       _AFFECTED.ecosystem, _AFFECTED.release, _AFFECTED.package,
                       _AFFECTED.status, _AFFECTED.ranges, _AFFECTED.versions,
                       _AFFECTED.fixed).where(_AFFECTED.ecosystem == ecosystem,
                                              _AFFECTED.package.in_(names))
        with self._conn() as c:
            return [AffectedRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]),
                                   json.loads(r[8]), r[9]) for r in c.execute(query)]

    @locked
    def advisory(self, advisory_id: str) -> AdvisoryRecord | None:
        with self._conn() as c:
            r = c.execute(select(_ADVISORY.id, _ADVISORY.aliases, _ADVISORY.summary,
                                 _ADVISORY.severity, _ADVISORY.cvss_score, _ADVISORY.modified,
                                 _ADVISORY.sources).where(_ADVISORY.id == advisory_id)).first()
        if r is None:
            return None
        return AdvisoryRecord(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5],
                              ",".join(json.loads(r[6])))

    @locked
    def related_ids(self, advisory_id: str) -> list[str]:
        """Ids linked to ``advisory_id`` by an alias, in either direction."""
        alias = vuln_alias.c
        query = union(select(alias.advisory_id).where(alias.alias == advisory_id),
                      select(alias.alias).where(alias.advisory_id == advisory_id))
        with self._conn() as c:
            return sorted(r[0] for r in c.execute(query))
