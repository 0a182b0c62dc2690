"""Image assurance policies and their verdicts.

A policy is YAML/JSON (``kind: ImageAssurancePolicy``); ``evaluate`` is pure: scan result
in, verdict (pass/fail with reasons) out. ``record_verdict`` stores it per image digest.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moray.controlplane.scanner.engine.config import runs_as_root
from moray.controlplane.scanner.engine.model import ScanResult, Severity
from moray.controlplane.scanner.errors import ScanError

# PyYAML (policy files) and the store (SQLAlchemy) are imported where they are used:
# `moray-scan --fail-on` evaluates a policy without either (~0.2 s less start-up)
if TYPE_CHECKING:
    from moray.controlplane.store.scanstore import ScanStore, Verdict


class ScanPolicyError(ScanError):
    """A policy document is invalid."""


@dataclass(frozen=True, slots=True)
class AssurancePolicy:
    name: str = "default"
    fail_on: Severity | None = None  # fail on any finding (of any kind) at least this severe
    fixable_only: bool = False  # count only vulnerabilities that have a fix
    no_secrets: bool = False
    no_malware: bool = False
    no_unsafe_entries: bool = False  # any refused hostile layer entry fails, whatever its level
    not_root: bool = False
    allowed_registries: tuple[str, ...] = ()  # glob patterns on the registry host
    required_labels: tuple[str, ...] = ()
    ignore: tuple[str, ...] = field(default=())  # vulnerability ids accepted as risk
    # SPDX ids (fnmatch: "AGPL-*", "LicenseRef-*") no package may be bound by
    forbidden_licenses: tuple[str, ...] = ()
    # fail on packages with no license or one not on the SPDX list, of these ecosystems
    # ("*" for all; OS packages of distroless images often carry no copyright file)
    unknown_licenses: tuple[str, ...] = ()
    license_exceptions: tuple[str, ...] = ()  # package names (fnmatch) exempt from both


_KEYS = {"failOn", "fixableOnly", "noSecrets", "noMalware", "noUnsafeEntries", "notRoot",
         "allowedRegistries", "requiredLabels", "ignore", "licenses"}
_LICENSE_KEYS = {"forbidden", "failOnUnknown", "exceptions"}


def load_policy(path: Path) -> AssurancePolicy:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ScanPolicyError(f"cannot read policy: {err}", path=str(path)) from err
    if not isinstance(doc, dict) or doc.get("kind") != "ImageAssurancePolicy":
        raise ScanPolicyError("not an ImageAssurancePolicy document", path=str(path))
    return policy_from_dict(doc, str(path))


def policy_from_dict(doc: dict[str, Any], where: str = "") -> AssurancePolicy:
    spec = doc.get("spec") or {}
    unknown = set(spec) - _KEYS
    if unknown:
        raise ScanPolicyError(f"unknown spec fields: {', '.join(sorted(unknown))}", path=where)
    fail_on = None
    if spec.get("failOn"):
        fail_on = Severity.parse(str(spec["failOn"]))
        if fail_on is Severity.UNKNOWN and str(spec["failOn"]).lower() != "unknown":
            raise ScanPolicyError(f"spec.failOn: bad severity {spec['failOn']!r}", path=where)
    licenses = spec.get("licenses") or {}
    if not isinstance(licenses, dict) or set(licenses) - _LICENSE_KEYS:
        raise ScanPolicyError("spec.licenses: a mapping of forbidden, failOnUnknown, "
                              "exceptions", path=where)
    unrecognised = licenses.get("failOnUnknown", False)
    if unrecognised is True:
        unrecognised = ["*"]
    elif unrecognised is False or unrecognised is None:
        unrecognised = []
    if not isinstance(unrecognised, list) or not all(isinstance(u, str) for u in unrecognised):
        raise ScanPolicyError("spec.licenses.failOnUnknown: true, false or a list of "
                              "ecosystems (deb, apk, rpm, pypi, npm, maven, ...)", path=where)
    return AssurancePolicy(
        forbidden_licenses=tuple(str(x) for x in licenses.get("forbidden") or ()),
        unknown_licenses=tuple(unrecognised),
        license_exceptions=tuple(str(x) for x in licenses.get("exceptions") or ()),
        name=str((doc.get("metadata") or {}).get("name", "default")),
        fail_on=fail_on,
        fixable_only=bool(spec.get("fixableOnly", False)),
        no_secrets=bool(spec.get("noSecrets", False)),
        no_malware=bool(spec.get("noMalware", False)),
        no_unsafe_entries=bool(spec.get("noUnsafeEntries", False)),
        not_root=bool(spec.get("notRoot", False)),
        allowed_registries=tuple(spec.get("allowedRegistries") or ()),
        required_labels=tuple(spec.get("requiredLabels") or ()),
        ignore=tuple(spec.get("ignore") or ()),
    )


def registry_of(image: str) -> str:
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def evaluate(result: ScanResult, policy: AssurancePolicy) -> tuple[bool, list[str]]:
    reasons: list[str] = []
    if policy.fail_on is not None:
        bad = [v for v in result.vulnerabilities
               if v.severity.rank >= policy.fail_on.rank and v.id not in policy.ignore
               and not set(v.aliases) & set(policy.ignore)
               and (v.fixable or not policy.fixable_only)]
        if bad:
            worst = sorted(bad, key=lambda v: -v.severity.rank)[:5]
            reasons.append(
                f"{len(bad)} {'fixable ' if policy.fixable_only else ''}vulnerabilities at "
                f"{policy.fail_on} or above (e.g. "
                + ", ".join(f"{v.id} in {v.package.name} {v.package.version}" for v in worst)
                + ")")
        other = [f"{s.title} in /{s.path}" for s in result.secrets
                 if s.severity.rank >= policy.fail_on.rank]
        other += [f"{m.rule} in /{m.path}" for m in result.malware
                  if m.severity.rank >= policy.fail_on.rank]
        other += [c.title for c in result.config_findings
                  if c.severity.rank >= policy.fail_on.rank]
        other += [f"{e.title}: {e.path}" for e in result.unsafe_entries
                  if e.severity.rank >= policy.fail_on.rank]
        if other:
            reasons.append(f"{len(other)} other findings at {policy.fail_on} or above (e.g. "
                           + ", ".join(sorted(set(other))[:5]) + ")")
    if policy.no_secrets and result.secrets:
        reasons.append(f"{len(result.secrets)} secrets in layers")
    if policy.no_malware and result.malware:
        reasons.append(f"{len(result.malware)} malware detections: "
                       + ", ".join(sorted({f"{m.rule} in /{m.path}" for m in result.malware})[:5]))
    if policy.no_unsafe_entries and result.unsafe_entries:
        reasons.append(f"{len(result.unsafe_entries)} hostile layer entries: " + ", ".join(
            sorted({f"{e.rule} {e.path}" for e in result.unsafe_entries})[:5]))
    if policy.not_root and runs_as_root(result.config.user):
        reasons.append("image runs as root")
    if policy.allowed_registries:
        refs = [result.image, *result.repo_tags]
        regs = {registry_of(r) for r in refs if ":" in r or "/" in r}
        if not any(fnmatch.fnmatch(reg, pat) for reg in regs for pat in policy.allowed_registries):
            reasons.append(f"registry {', '.join(sorted(regs)) or '(none)'} not allowed")
    for label in policy.required_labels:
        if label not in result.config.labels:
            reasons.append(f"required label {label!r} missing")
    reasons.extend(license_reasons(result, policy))
    return (not reasons), reasons


def license_reasons(result: ScanResult, policy: AssurancePolicy) -> list[str]:
    if not policy.forbidden_licenses and not policy.unknown_licenses:
        return []
    from moray.controlplane.scanner.engine.licenses import forbidden_in, is_unknown

    forbidden: list[str] = []
    unknown: list[str] = []
    for p in result.packages:
        if any(fnmatch.fnmatch(p.name, x) for x in policy.license_exceptions):
            continue
        if policy.forbidden_licenses:
            hits = forbidden_in(p.licenses, policy.forbidden_licenses)
            if hits:
                forbidden.append(f"{p.name} {p.version} ({' AND '.join(hits)})")
        if policy.unknown_licenses and is_unknown(p.licenses) and (
                "*" in policy.unknown_licenses or str(p.ecosystem) in policy.unknown_licenses):
            unknown.append(f"{p.name} {p.version}"
                           + (f" ({', '.join(p.licenses)})" if p.licenses else ""))
    reasons = []
    if forbidden:
        reasons.append(f"{len(forbidden)} packages under forbidden licenses (e.g. "
                       + ", ".join(sorted(set(forbidden))[:5]) + ")")
    if unknown:
        reasons.append(f"{len(unknown)} packages with no or an unknown license (e.g. "
                       + ", ".join(sorted(set(unknown))[:5]) + ")")
    return reasons


def record_verdict(store: ScanStore, result: ScanResult, policy: AssurancePolicy) -> Verdict:
    from moray.controlplane.store.scanstore import image_report, image_vulns

    passed, reasons = evaluate(result, policy)
    return store.record_verdict(result.digest, result.image, policy.name, passed, reasons,
                                vulnerabilities=image_vulns(result),
                                config_digest=result.config_digest,
                                report=image_report(result))
