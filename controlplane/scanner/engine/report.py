"""Report formats: human table, JSON, SARIF 2.1.0, CycloneDX 1.6 (cyclonedx-python-lib),
SPDX 2.3 JSON.

Secrets appear only masked in every format (the records never hold the raw value).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from moray.controlplane.scanner.engine.model import ScanResult, Severity
from moray.controlplane.scanner.engine.serialize import to_jsonable

TOOL_NAME = "moray-scan"
TOOL_VERSION = "0.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning",
                Severity.LOW: "note", Severity.UNKNOWN: "note"}
_SARIF_SCORE = {Severity.CRITICAL: "9.5", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5",
                Severity.LOW: "2.0", Severity.UNKNOWN: "0.0"}


def to_json(result: ScanResult, verdict: tuple[bool, list[str]] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "image": result.image,
        "digest": result.digest,
        "config_digest": result.config_digest,
        "os": to_jsonable(result.os),
        "layers": result.layers,
        "packages": to_jsonable(result.packages),
        "vulnerabilities": [
            {**to_jsonable(v), "package": {"name": v.package.name, "version": v.package.version,
                                           "purl": v.package.purl, "path": v.package.path,
                                           "layer": v.package.layer}}
            for v in result.vulnerabilities
        ],
        "secrets": to_jsonable(result.secrets),
        "malware": to_jsonable(result.malware),
        "config_findings": to_jsonable(result.config_findings),
        "unsafe_entries": [{**to_jsonable(e), "title": e.title} for e in result.unsafe_entries],
        "warnings": to_jsonable(result.warnings),
    }
    if verdict is not None:
        doc["verdict"] = {"passed": verdict[0], "reasons": verdict[1]}
    return doc


def _table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [min(max(len(h), *(len(r[i]) for r in rows)), 60) for i, h in enumerate(headers)]
    def cut(cell: str, width: int) -> str:  # a cut cell ends with an ellipsis
        return cell if len(cell) <= width else cell[:width - 1] + "\u2026"

    def fmt(cells: list[str]) -> str:
        return "  ".join(cut(c, w).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def to_table(result: ScanResult, verdict: tuple[bool, list[str]] | None = None) -> str:
    counts = {s: 0 for s in Severity}
    for v in result.vulnerabilities:
        counts[v.severity] += 1
    os_name = f"{result.os.id} {result.os.version_id}" if result.os else "unknown"
    out = [
        f"{result.image} ({result.digest})",
        f"OS: {os_name}   packages: {len(result.packages)}   layers: {len(result.layers)}",
        "vulnerabilities: " + ", ".join(f"{s.upper()} {counts[s]}" for s in reversed(Severity)),
        "",
    ]
    vrows = [[v.package.name, v.package.version, v.id, str(v.severity).upper(),
              v.fixed_version or "-", v.package.path] for v in result.vulnerabilities]
    if vrows:
        out += [_table(["PACKAGE", "VERSION", "VULNERABILITY", "SEVERITY", "FIXED IN", "PATH"],
                       vrows), ""]
    srows = [[s.rule, str(s.severity).upper(), f"/{s.path}:{s.line}", s.masked,
              "yes" if s.deleted_later else "no", s.layer[7:19]] for s in result.secrets]
    if srows:
        out += ["Secrets:", _table(["RULE", "SEVERITY", "LOCATION", "MATCH", "DELETED LATER",
                                    "LAYER"], srows), ""]
    mrows = [[m.rule, f"/{m.path}", m.sha256[:16], m.layer[7:19]] for m in result.malware]
    if mrows:
        out += ["Malware:", _table(["RULE", "PATH", "SHA256", "LAYER"], mrows), ""]
    crows = [[c.rule, str(c.severity).upper(), c.title, c.detail] for c in result.config_findings]
    if crows:
        out += ["Configuration:", _table(["RULE", "SEVERITY", "TITLE", "DETAIL"], crows), ""]
    erows = [[e.rule, str(e.severity).upper(), e.path, e.detail.removeprefix("refused: "),
              e.layer[7:19]] for e in result.unsafe_entries]
    if erows:
        out += ["Hostile layer entries (refused):",
                _table(["RULE", "SEVERITY", "PATH", "DETAIL", "LAYER"], erows), ""]
    if result.packages:
        per_license, unknown = license_summary(result)
        shown = ", ".join(f"{e} {n}" for e, n in list(per_license.items())[:8])
        more = f", {len(per_license) - 8} more" if len(per_license) > 8 else ""
        out += [f"Licenses: {shown or '-'}{more}; no or unknown license: {unknown} packages "
                "(per package: --format json, cyclonedx, spdx-json)", ""]
    if result.warnings:
        out += [f"{len(result.warnings)} layer entries skipped (see --format json)", ""]
    if verdict is not None:
        out.append("VERDICT: " + ("PASS" if verdict[0] else "FAIL"))
        out += [f"  - {r}" for r in verdict[1]]
    return "\n".join(out).rstrip() + "\n"


def to_sarif(result: ScanResult) -> dict[str, Any]:
    rules: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []

    def add(rule_id: str, title: str, sev: Severity, message: str, uri: str, *, line: int = 1,
            help_uri: str = "", score: float | None = None) -> None:
        if rule_id not in rules:
            rules[rule_id] = {
                "id": rule_id, "name": rule_id.replace("-", "_"),
                "shortDescription": {"text": title[:200] or rule_id},
                "fullDescription": {"text": title or rule_id},
                "defaultConfiguration": {"level": _SARIF_LEVEL[sev]},
                # GitHub code scanning reads the CVSS score here; the label's midpoint
                # only when no source gives a score
                "properties": {"security-severity": (f"{score:.1f}" if score is not None
                                                     else _SARIF_SCORE[sev]),
                               "tags": ["security"]},
            }
            if help_uri:
                rules[rule_id]["helpUri"] = help_uri
        results.append({
            "ruleId": rule_id, "ruleIndex": list(rules).index(rule_id),
            "level": _SARIF_LEVEL[sev], "message": {"text": message},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": uri.lstrip("/")},
                "region": {"startLine": max(line, 1)}}}],
        })

    for v in result.vulnerabilities:
        add(v.id, v.summary or v.id, v.severity,
            f"{v.package.name} {v.package.version} is affected by {v.id} ({v.severity})"
            + (f"; fixed in {v.fixed_version}" if v.fixed_version else "; no fix yet"),
            v.package.path, help_uri=f"https://osv.dev/vulnerability/{v.id}",
            score=v.cvss_score)
    for s in result.secrets:
        add(f"secret/{s.rule}", s.title, s.severity,
            f"{s.title}: {s.masked}" + (" (deleted in a later layer, still in the image)"
                                        if s.deleted_later else ""), s.path, line=s.line)
    for m in result.malware:
        add(f"malware/{m.rule}", f"malware {m.rule}", m.severity,
            f"malware {m.rule} (sha256 {m.sha256})", m.path)
    for c in result.config_findings:
        add(f"config/{c.rule}", c.title, c.severity, f"{c.title}: {c.detail}", "Dockerfile")
    for e in result.unsafe_entries:
        add(f"layer/{e.rule}", e.title, e.severity,
            f"{e.title}: {e.path!r} in layer {e.layer} ({e.detail})",
            quote(e.path.lstrip("/"), safe="/") or "layer")
    return {
        "$schema": SARIF_SCHEMA, "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": TOOL_NAME, "version": TOOL_VERSION,
                                "informationUri": "https://github.com/moray/moray",
                                "rules": list(rules.values())}},
            "results": results,
            "properties": {"image": result.image, "digest": result.digest},
        }],
    }


def to_cyclonedx(result: ScanResult) -> str:
    # imported here: cyclonedx-python-lib costs ~60 ms of start-up that other formats skip
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.vulnerability import (
        BomTarget,
        Vulnerability,
        VulnerabilityRating,
        VulnerabilitySeverity,
    )
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    bom = Bom()
    root = Component(name=result.image, version=result.digest, type=ComponentType.CONTAINER,
                     bom_ref=result.digest)
    bom.metadata.component = root
    refs: dict[str, Component] = {}
    for p in result.packages:
        purl = p.purl
        if purl in refs:
            continue
        comp = Component(name=p.name, version=p.version, group=p.namespace or None,
                         type=ComponentType.LIBRARY if p.ecosystem not in ("deb", "apk", "rpm")
                         else ComponentType.APPLICATION,
                         purl=PackageURL.from_string(purl), bom_ref=purl,
                         licenses=_cdx_licenses(p.licenses))
        refs[purl] = comp
        bom.components.add(comp)
    bom.register_dependency(root, list(refs.values()))
    for i, v in enumerate(result.vulnerabilities):
        sev = (VulnerabilitySeverity(str(v.severity)) if v.severity is not Severity.UNKNOWN
               else VulnerabilitySeverity.UNKNOWN)
        bom.vulnerabilities.add(Vulnerability(
            bom_ref=f"vuln-{i}-{v.id}", id=v.id, description=v.summary or None,
            ratings=[VulnerabilityRating(
                severity=sev,
                score=Decimal(str(v.cvss_score)) if v.cvss_score is not None else None)],
            recommendation=f"upgrade to {v.fixed_version}" if v.fixed_version else None,
            affects=[BomTarget(ref=v.package.purl)],
        ))
    return str(JsonV1Dot6(bom).output_as_string(indent=2))


def _cdx_licenses(expressions: tuple[str, ...]) -> list[Any]:
    """CycloneDX allows a list of licenses (an SPDX id or a name each) or one expression:
    single ids stay a list, anything compound is joined into one expression."""
    if not expressions:
        return []
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression

    made = [LicenseFactory().make_from_string(e) for e in expressions]
    if all(isinstance(m, DisjunctiveLicense) for m in made):
        return made
    return [LicenseExpression(" AND ".join(
        f"({e})" if " " in e and len(expressions) > 1 else e for e in expressions))]


def license_summary(result: ScanResult) -> tuple[dict[str, int], int]:
    """(packages per license expression, packages with no or an unknown license)."""
    from moray.controlplane.scanner.engine.licenses import is_unknown

    counts: dict[str, int] = {}
    unknown = 0
    for p in result.packages:
        for e in p.licenses:
            counts[e] = counts.get(e, 0) + 1
        unknown += is_unknown(p.licenses)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))), unknown


def render(result: ScanResult, fmt: str, verdict: tuple[bool, list[str]] | None = None) -> str:
    if fmt == "table":
        return to_table(result, verdict)
    if fmt == "json":
        return json.dumps(to_json(result, verdict), indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(to_sarif(result), indent=2) + "\n"
    if fmt == "cyclonedx":
        return to_cyclonedx(result) + "\n"
    if fmt == "spdx-json":
        from moray.controlplane.scanner.engine.spdx import to_spdx

        return json.dumps(to_spdx(result), indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}")
