"""Secret detection: rules for known credential formats plus an entropy check.

Values never leave this module unmasked: a finding holds the first four characters and
asterisks. Binary files (a NUL in the first 8 KiB) and paths that are known to be noise
(documentation, test suites of language runtimes) are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass

from controlplane.scanner.config import mask
from controlplane.scanner.model import SecretFinding, Severity

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SecretRule:
    id: str
    title: str
    severity: Severity
    pattern: re.Pattern[str]
    group: int = 0  # which group holds the secret value
    min_entropy: float = 0.0


def _r(p: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(p, flags)


RULES: tuple[SecretRule, ...] = (
    SecretRule("aws-access-key-id", "AWS access key ID", Severity.CRITICAL,
               _r(r"\b((?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})\b"), 1),
    SecretRule("aws-secret-access-key", "AWS secret access key", Severity.CRITICAL,
               _r(r"(?i)aws_?secret_?access_?key\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})\b"), 1,
               3.5),
    SecretRule("private-key", "private key", Severity.HIGH,
               _r(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY"
                  r"(?: BLOCK)?-----")),
    SecretRule("github-token", "GitHub token", Severity.CRITICAL,
               _r(r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\b"),
               1),
    SecretRule("gitlab-token", "GitLab personal access token", Severity.CRITICAL,
               _r(r"\b(glpat-[A-Za-z0-9_-]{20})\b"), 1),
    SecretRule("slack-token", "Slack token", Severity.HIGH,
               _r(r"\b(xox[baprs]-[0-9A-Za-z-]{10,72})\b"), 1),
    SecretRule("stripe-key", "Stripe secret key", Severity.CRITICAL,
               _r(r"\b((?:sk|rk)_live_[0-9a-zA-Z]{24,99})\b"), 1),
    SecretRule("google-api-key", "Google API key", Severity.HIGH,
               _r(r"\b(AIza[0-9A-Za-z_-]{35})\b"), 1),
    SecretRule("npm-token", "npm access token", Severity.HIGH,
               _r(r"\b(npm_[A-Za-z0-9]{36})\b"), 1),
    SecretRule("database-url", "database URL with password", Severity.HIGH,
               _r(r"\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|redis|amqps?|mssql)"
                  r"://[^\s:/@\"']+:([^\s@/\"']{3,})@[^\s\"']+"), 1),
    SecretRule("gcp-service-account", "Google Cloud service account key", Severity.CRITICAL,
               _r(r'"private_key_id"\s*:\s*"([0-9a-f]{40})"'), 1),
    SecretRule("azure-storage-key", "Azure storage account key", Severity.CRITICAL,
               _r(r"AccountKey=([A-Za-z0-9+/]{86}==)"), 1),
    SecretRule("sendgrid-key", "SendGrid API key", Severity.HIGH,
               _r(r"\b(SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})\b"), 1),
    SecretRule("twilio-key", "Twilio API key", Severity.HIGH,
               _r(r"\b(SK[0-9a-fA-F]{32})\b"), 1, 3.0),
    SecretRule("huggingface-token", "Hugging Face access token", Severity.HIGH,
               _r(r"\b(hf_[A-Za-z]{34})\b"), 1),
    SecretRule("openai-key", "OpenAI API key", Severity.HIGH,
               _r(r"\b(sk-(?:proj-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,})\b"), 1),
    SecretRule("pypi-token", "PyPI upload token", Severity.HIGH,
               _r(r"\b(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,})"), 1),
    SecretRule("npmrc-auth", "npm registry credential in .npmrc", Severity.HIGH,
               _r(r"(?m)^\s*(?://[^\s]+:)?_(?:authToken|auth|password)\s*=\s*(\S{8,})"), 1),
    SecretRule("docker-config-auth", "registry credential in docker config.json", Severity.HIGH,
               _r(r'"auth"\s*:\s*"([A-Za-z0-9+/=]{12,})"'), 1),
    SecretRule("jwt", "JSON Web Token", Severity.MEDIUM,
               _r(r"\b(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,})"), 1),
    SecretRule("generic-secret", "high-entropy secret assignment", Severity.MEDIUM,
               _r(r"(?i)\b(?:password|passwd|secret|api_?key|access_?token|auth_?token)"
                  r"[\"']?\s*[:=]\s*[\"']([^\s\"']{12,})[\"']"), 1, 3.5),
)

SKIP_PREFIXES = ("usr/share/doc/", "usr/share/man/", "usr/share/locale/", "usr/include/",
                 "usr/share/zoneinfo/", "usr/share/i18n/")
SKIP_SUFFIXES = (".md5sums", ".pyc", ".so", ".mo", ".gz", ".png", ".jpg", ".svg")
# package metadata and bundled docs quote example tokens (PyJWT's PKG-INFO holds a JWT)
SKIP_NAMES = ("METADATA", "PKG-INFO", "README", "README.md", "README.rst", "CHANGELOG.md",
              "HISTORY.md", "CHANGES.rst")


def shannon_entropy(text: str) -> float:
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


class SecretScanner:
    def __init__(self, rules: tuple[SecretRule, ...] = RULES, max_bytes: int = 2 << 20) -> None:
        self.rules = rules
        self.max_bytes = max_bytes
        digest = hashlib.sha256(repr([(r.id, r.pattern.pattern, r.min_entropy)
                                      for r in rules]).encode())
        self.fingerprint = "s" + digest.hexdigest()[:12]  # part of the layer cache key

    def scan_file(self, path: str, data: bytes, layer: str) -> list[SecretFinding]:
        if path.startswith(SKIP_PREFIXES) or path.endswith(SKIP_SUFFIXES):
            return []
        if path.rsplit("/", 1)[-1] in SKIP_NAMES and ("-info/" in path or "node_modules/" in path
                                                       or path.endswith(".egg-info")):
            return []
        if b"\x00" in data[:8192]:
            return []
        text = data.decode("utf-8", "replace")
        findings = []
        seen: set[tuple[str, int]] = set()
        for rule in self.rules:
            for m in rule.pattern.finditer(text):
                value = m.group(rule.group)
                if rule.min_entropy and shannon_entropy(value) < rule.min_entropy:
                    continue
                line = text.count("\n", 0, m.start()) + 1
                if (rule.id, line) in seen:
                    continue
                seen.add((rule.id, line))
                findings.append(SecretFinding(rule.id, rule.title, rule.severity, path, layer,
                                              line, mask(value)))
        return findings
