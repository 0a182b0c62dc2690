"""Matching packages against the knowledge base.

For each package the rows of its ecosystem and name (for OS packages also its source
package name) are fetched; per advisory the rows for the image's own release win over
distro-wide rows (Debian tracker's unstable state), a ``not_affected`` row clears the
advisory, and otherwise the version is evaluated with the ecosystem's own order.
Findings for one package that share an identifier (a DSA and its CVE, a GHSA and its
PYSEC twin) are merged into one.

Severity precedence: the vendor first (the advisory's own source, then the advisories
linked to it by an alias: a DSA's CVE, a PYSEC's GHSA), then NVD (``nvd:CVE-...``, for the
advisory's CVE ids), else ``unknown``. ``VulnFinding.severity_source`` says which.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from moray.controlplane.scanner.engine.model import OSRelease, Package, Severity, VulnFinding
from moray.controlplane.store.scanstore import AdvisoryRecord, AffectedRecord, ScanStore
from moray.controlplane.vulndb.names import NVD_PREFIX, nvd_id, package_key, release_key
from moray.controlplane.vulndb.versions import first_fixed, is_affected

log = logging.getLogger(__name__)

OS_ECOSYSTEMS = ("deb", "apk", "rpm")


def image_release(os: OSRelease | None) -> str:
    if os is None:
        return ""
    return release_key(os.id, os.version_id or os.codename)


class Matcher:
    def __init__(self, store: ScanStore) -> None:
        self.store = store
        self._advisories: dict[str, AdvisoryRecord | None] = {}

    def _advisory(self, advisory_id: str) -> AdvisoryRecord | None:
        if advisory_id not in self._advisories:
            self._advisories[advisory_id] = self.store.advisory(advisory_id)
        return self._advisories[advisory_id]

    def match(self, packages: Sequence[Package], os: OSRelease | None) -> list[VulnFinding]:
        release = image_release(os)
        distro_wide = release.split(":")[0] + ":" if release else ""
        findings: list[VulnFinding] = []
        for pkg in packages:
            eco = str(pkg.ecosystem)
            if eco in OS_ECOSYSTEMS and not release:
                log.debug("no OS release known; OS package not matched",
                          extra={"package": pkg.name})
                continue
            names = {package_key(eco, pkg.name, pkg.namespace)}
            if eco in OS_ECOSYSTEMS and pkg.source_name:
                names.add(pkg.source_name)
            rows = self.store.affected_for(eco, names)
            by_advisory: dict[str, list[AffectedRecord]] = defaultdict(list)
            for row in rows:
                if eco in OS_ECOSYSTEMS and row.release not in (release, distro_wide):
                    continue
                by_advisory[row.advisory_id].append(row)
            found = []
            for advisory_id, adv_rows in by_advisory.items():
                finding = self._evaluate(pkg, advisory_id, adv_rows, release)
                if finding is not None:
                    found.append(finding)
            findings.extend(merge_findings(found))
        return findings

    def _evaluate(self, pkg: Package, advisory_id: str, rows: list[AffectedRecord],
                  release: str) -> VulnFinding | None:
        specific = [r for r in rows if r.release == release]
        chosen = specific or rows
        if any(r.status == "not_affected" for r in chosen):
            return None
        eco = str(pkg.ecosystem)
        fixed = ""
        hit = False
        for r in chosen:
            version = (pkg.source_version if r.package == pkg.source_name and pkg.source_version
                       else pkg.version)
            if is_affected(eco, version, r.ranges, r.versions):
                hit = True
                fixed = fixed or first_fixed(eco, version, r.ranges)
        if not hit:
            return None
        adv = self._advisory(advisory_id)
        severity, score, severity_source = self._severity(adv)
        return VulnFinding(
            id=advisory_id, package=pkg,
            severity=severity,
            fixed_version=fixed, aliases=tuple(adv.aliases) if adv else (),
            summary=adv.summary if adv else "", source=chosen[0].source,
            cvss_score=score, severity_source=severity_source,
        )

    def _severity(self, adv: AdvisoryRecord | None) -> tuple[Severity, float | None, str]:
        """(severity, score, where it came from): the advisory's own, else the highest
        among its aliases in the store (the vendor's), else NVD's for its CVE ids."""
        if adv is None:
            return Severity.UNKNOWN, None, ""
        best = (Severity.parse(adv.severity), adv.cvss_score, _vendor(adv))
        if best[0] is not Severity.UNKNOWN:
            return best
        related = [i for i in self.store.related_ids(adv.id) if not i.startswith(NVD_PREFIX)]
        for alias in related:
            other = self._advisory(alias)
            if other is not None and Severity.parse(other.severity).rank > best[0].rank:
                best = (Severity.parse(other.severity), other.cvss_score, _vendor(other))
        if best[0] is not Severity.UNKNOWN:
            return best
        for cve in sorted({i for i in (adv.id, *adv.aliases, *related) if i.startswith("CVE-")}):
            nvd = self._advisory(nvd_id(cve))
            if nvd is not None and Severity.parse(nvd.severity).rank > best[0].rank:
                best = (Severity.parse(nvd.severity), nvd.cvss_score, "nvd")
        return best


def _vendor(adv: AdvisoryRecord) -> str:
    """The advisory's sources other than NVD (a record may have been seen in several)."""
    return ",".join(s for s in adv.source.split(",") if s and s != "nvd")


def _preferred_id(own: set[str], every: set[str]) -> str:
    """The one CVE id the group shares, else the smallest advisory id of its own."""
    cves = sorted(i for i in every if i.startswith("CVE-"))
    return cves[0] if len(cves) == 1 else sorted(own)[0]


def merge_findings(found: list[VulnFinding]) -> list[VulnFinding]:
    """Merge findings of one package that share any identifier (id or alias)."""
    groups: list[list[VulnFinding]] = []
    for f in sorted(found, key=lambda f: f.id):
        ids = {f.id, *f.aliases}
        match = [g for g in groups if any(ids & {x.id, *x.aliases} for x in g)]
        merged = [f]
        for g in match:
            groups.remove(g)
            merged.extend(g)
        groups.append(merged)
    out = []
    for g in groups:
        ids = {x for f in g for x in (f.id, *f.aliases)}
        primary = _preferred_id({f.id for f in g}, ids)
        # a vendor's severity wins over NVD's, whichever is higher
        rated = [f for f in g if f.severity is not Severity.UNKNOWN]
        rated = [f for f in rated if f.severity_source != "nvd"] or rated
        top = max(rated, key=lambda f: (f.severity.rank, f.cvss_score or 0.0), default=None)
        severity = top.severity if top else Severity.UNKNOWN
        fixes = [f.fixed_version for f in g if f.fixed_version]
        base = next((f for f in g if f.id == primary), g[0])
        out.append(VulnFinding(
            id=primary, package=base.package, severity=severity,
            fixed_version=base.fixed_version or (fixes[0] if fixes else ""),
            aliases=tuple(sorted(ids - {primary})), summary=next(
                (f.summary for f in g if f.summary), ""),
            source=",".join(sorted({f.source for f in g})),
            cvss_score=top.cvss_score if top else None,
            severity_source=top.severity_source if top else "",
        ))
    return sorted(out, key=lambda f: (-f.severity.rank, f.id))
