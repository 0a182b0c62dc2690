"""Parsers for advisory formats -> store records. Pure: bytes in, records out.

- OSV: one record per file (or a JSON list); ``affected[].ranges`` kept as-is (GIT ranges
  are stored but never evaluated), ``versions`` lists kept, severity from a CVSS vector
  (cvss library) or the database's own label.
- Debian security tracker (vuln-list-debian JSON): DSA files and CVE files. Every row is
  keyed by CVE id (a DSA's CVEs come from its xref line), so a DSA's per-release fix and a
  CVE file's release-less (unstable) state combine as in the tracker itself.
- Alpine secdb: whole-release (``packages[].pkg``) or per-package files; fixed version
  ``0`` means the release was never affected.
- NVD CVE JSON 2.0 (one ``cve`` object of the API's or the feeds' ``vulnerabilities[]``):
  severity only. Stored as the advisory ``nvd:CVE-...`` (``names.nvd_id``) with no
  affected rows (NVD's CPE ranges name products, not packages), so it never adds a
  finding and never overrides a vendor's severity: the matcher reads it only for
  findings whose own sources give none.
"""

from __future__ import annotations

import logging
from typing import Any

from cvss import CVSS3, CVSS4
from cvss.exceptions import CVSSError

from moray.controlplane.scanner.engine.model import Severity
from moray.controlplane.store.scanstore import AdvisoryRecord, AffectedRecord
from moray.controlplane.vulndb.names import nvd_id, osv_ecosystem, package_key, release_key

log = logging.getLogger(__name__)

Parsed = tuple[list[AdvisoryRecord], list[AffectedRecord]]


def severity_from_score(score: float) -> Severity:
    if score >= 9.0:
        return Severity.CRITICAL
    if score >= 7.0:
        return Severity.HIGH
    if score >= 4.0:
        return Severity.MEDIUM
    if score > 0:
        return Severity.LOW
    return Severity.UNKNOWN


def cvss_score(vector: str) -> float | None:
    try:
        if vector.startswith("CVSS:4"):
            return float(CVSS4(vector).base_score)
        if vector.startswith("CVSS:3"):
            return float(CVSS3(vector).scores()[0])
    except (CVSSError, ValueError, KeyError) as err:
        log.debug("bad CVSS vector", extra={"vector": vector, "error": str(err)})
    return None


def osv_severity(doc: dict[str, Any]) -> tuple[Severity, float | None]:
    score = None
    for s in doc.get("severity") or []:
        if s.get("type") in ("CVSS_V3", "CVSS_V4"):
            got = cvss_score(str(s.get("score", "")))
            if got is not None and (score is None or got > score):
                score = got
    if score is not None:
        return severity_from_score(score), score
    labels = [(doc.get("database_specific") or {}).get("severity")]
    for a in doc.get("affected") or []:
        for extra in (a.get("ecosystem_specific"), a.get("database_specific")):
            if isinstance(extra, dict):
                labels.append(extra.get("severity"))
    for label in labels:
        if isinstance(label, str) and Severity.parse(label) is not Severity.UNKNOWN:
            return Severity.parse(label), None
    return Severity.UNKNOWN, None


def parse_osv(doc: dict[str, Any], source: str = "osv") -> Parsed:
    adv_id = str(doc["id"])
    if doc.get("withdrawn"):
        return [], []
    severity, score = osv_severity(doc)
    advisory = AdvisoryRecord(
        adv_id, [str(a) for a in doc.get("aliases") or []],
        str(doc.get("summary") or doc.get("details") or "")[:500], str(severity), score,
        str(doc.get("modified", "")), source)
    rows: list[AffectedRecord] = []
    for a in doc.get("affected") or []:
        pkg = a.get("package") or {}
        eco = osv_ecosystem(str(pkg.get("ecosystem", "")))
        if eco is None or not pkg.get("name"):
            continue
        ranges = [r for r in a.get("ranges") or [] if isinstance(r, dict)]
        versions = [str(v) for v in a.get("versions") or []]
        fixed = next((str(e["fixed"]) for r in ranges if r.get("type") != "GIT"
                      for e in r.get("events", []) if "fixed" in e), "")
        rows.append(AffectedRecord(adv_id, source, adv_id, eco[0], eco[1],
                                   package_key(eco[0], str(pkg["name"])), "affected", ranges,
                                   versions, fixed))
    return [advisory], rows


NO_FIX_KINDS = {"unfixed", "no-dsa", "postponed", "ignored", "end-of-life", "undetermined",
                "itp"}


def parse_debian_tracker(doc: dict[str, Any], source: str = "debian-tracker") -> Parsed:
    header = doc.get("Header") or {}
    record_id = str(header.get("ID", ""))
    if not record_id:
        raise ValueError("tracker record without Header.ID")
    annotations = doc.get("Annotations") or []
    xrefs = [str(b) for a in annotations if a.get("Type") == "xref" for b in a.get("Bugs") or []]
    if record_id.startswith("CVE-"):
        cves, others = [record_id], [x for x in xrefs if not x.startswith("CVE-")]
    else:
        cves = [x for x in xrefs if x.startswith("CVE-")] or [record_id]
        others = [record_id] + [x for x in xrefs if not x.startswith("CVE-")]
    summary = str(header.get("Description", "")).strip("[]() ")
    advisories = [AdvisoryRecord(c, others, summary, str(Severity.UNKNOWN), None, "", source)
                  for c in cves]
    rows: list[AffectedRecord] = []
    for a in annotations:
        if a.get("Type") != "package" or not a.get("Package"):
            continue
        release = release_key("debian", str(a["Release"])) if a.get("Release") else "debian:"
        kind = str(a.get("Kind", ""))
        version = str(a.get("Version") or "")
        if kind == "not-affected" or (kind == "fixed" and version in ("0", "")):
            status, ranges, fixed = "not_affected", [], ""
        elif kind == "fixed":
            status, fixed = "affected", version
            ranges = [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": version}]}]
        elif kind in NO_FIX_KINDS:
            status, fixed = "affected", ""
            ranges = [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]
        else:
            log.debug("unknown tracker annotation kind", extra={"kind": kind, "id": record_id})
            continue
        rows.extend(AffectedRecord(c, source, record_id, "deb", release, str(a["Package"]),
                                   status, ranges, [], fixed) for c in cves)
    return advisories, rows


def parse_alpine_secdb(doc: dict[str, Any], origin: str, source: str = "alpine-secdb",
                       release_hint: str = "") -> Parsed:
    distro_version = str(doc.get("distroversion") or release_hint)
    if not distro_version:
        raise ValueError("secdb without distroversion and no release in the file name")
    release = release_key("alpine", distro_version)
    pkgs = [p.get("pkg") or {} for p in doc["packages"]] if "packages" in doc else [doc]
    advisories: dict[str, AdvisoryRecord] = {}
    rows: list[AffectedRecord] = []
    for pkg in pkgs:
        name = str(pkg.get("name") or "")
        if not name:
            continue
        for fixed, ids in (pkg.get("secfixes") or {}).items():
            for entry in ids or []:
                for vid in str(entry).split():
                    if not vid.startswith(("CVE-", "ALPINE-", "GHSA-", "XSA-")):
                        continue
                    advisories.setdefault(vid, AdvisoryRecord(
                        vid, [], "", str(Severity.UNKNOWN), None, "", source))
                    if str(fixed) == "0":
                        rows.append(AffectedRecord(vid, source, origin, "apk", release, name,
                                                   "not_affected", [], [], ""))
                    else:
                        rows.append(AffectedRecord(
                            vid, source, origin, "apk", release, name, "affected",
                            [{"type": "ECOSYSTEM",
                              "events": [{"introduced": "0"}, {"fixed": str(fixed)}]}],
                            [], str(fixed)))
    return list(advisories.values()), rows


# NVD metric lists in the order they are trusted: CVSS v3.1, v3.0, v4.0, then v2 (v2 has
# no "critical"; its own label is kept). Within a version NVD's own analysis ("Primary")
# comes before the CNA's ("Secondary").
NVD_METRICS = ("cvssMetricV31", "cvssMetricV30", "cvssMetricV40", "cvssMetricV2")


def nvd_severity(metrics: dict[str, Any]) -> tuple[Severity, float | None]:
    for key in NVD_METRICS:
        entries = [m for m in metrics.get(key) or [] if isinstance(m, dict)]
        entries.sort(key=lambda m: m.get("type") != "Primary")
        for m in entries:
            data = m.get("cvssData") or {}
            vector = str(data.get("vectorString", ""))
            if key == "cvssMetricV2":
                label = Severity.parse(str(m.get("baseSeverity") or ""))
                score = data.get("baseScore")
                if label is not Severity.UNKNOWN:
                    return label, float(score) if isinstance(score, int | float) else None
                continue
            score = cvss_score(vector)
            if score is None and isinstance(data.get("baseScore"), int | float):
                score = float(data["baseScore"])
            if score is not None:
                return severity_from_score(score), score
    return Severity.UNKNOWN, None


def parse_nvd(doc: dict[str, Any], source: str = "nvd") -> Parsed:
    """One NVD CVE record -> the ``nvd:CVE-...`` advisory (severity, score, summary)."""
    cve = str(doc["id"])
    if not cve.startswith("CVE-"):
        raise ValueError(f"NVD record id {cve!r} is not a CVE id")
    if str(doc.get("vulnStatus", "")).lower() == "rejected":
        return [], []
    severity, score = nvd_severity(doc.get("metrics") or {})
    summary = next((str(d.get("value", "")) for d in doc.get("descriptions") or []
                    if isinstance(d, dict) and d.get("lang") == "en"), "")
    return [AdvisoryRecord(nvd_id(cve), [], summary[:500], str(severity), score,
                           str(doc.get("lastModified", "")), source)], []
