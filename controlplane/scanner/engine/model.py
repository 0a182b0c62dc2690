"""Records the scanner produces: packages, findings, per-layer results, the scan result.

All records are frozen dataclasses; enums live here so every module shares one set.
``LayerResult`` is what is cached by layer digest, so it holds only what a layer alone
determines (never unmasked secret values). A package's URL (``Package.purl``, purl spec)
is built here too, from the record alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from packageurl import PackageURL


class Severity(enum.StrEnum):
    UNKNOWN = "unknown"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    @classmethod
    def parse(cls, text: str | None) -> Severity:
        """Map vendor spellings (GHSA ``MODERATE``, Debian ``not yet assigned``) to a level."""
        if not text:
            return cls.UNKNOWN
        value = text.strip().lower()
        value = {"moderate": "medium", "important": "high", "negligible": "low"}.get(value, value)
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


_SEVERITY_RANK = {
    Severity.UNKNOWN: 0,
    Severity.LOW: 1,
    Severity.MEDIUM: 2,
    Severity.HIGH: 3,
    Severity.CRITICAL: 4,
}


class Ecosystem(enum.StrEnum):
    """Package ecosystems, spelled as their package-url type."""

    DEB = "deb"
    APK = "apk"
    RPM = "rpm"
    PYPI = "pypi"
    NPM = "npm"
    GOLANG = "golang"
    MAVEN = "maven"
    CARGO = "cargo"


class FindingKind(enum.StrEnum):
    VULNERABILITY = "vulnerability"
    SECRET = "secret"
    MALWARE = "malware"
    CONFIG = "config"
    LAYER_ENTRY = "layer-entry"


@dataclass(frozen=True, slots=True)
class OSRelease:
    """The distribution of the image, from /etc/os-release or /etc/alpine-release."""

    id: str  # "debian", "alpine", "rhel", ...
    version_id: str  # "12", "3.18"
    codename: str = ""  # "bookworm"


@dataclass(frozen=True, slots=True)
class Package:
    ecosystem: Ecosystem
    name: str
    version: str
    path: str  # the file the package was found in, inside the image
    layer: str = ""  # digest of the layer that holds that file
    source_name: str = ""  # distro source package (dpkg Source, apk origin, rpm SRPM)
    source_version: str = ""
    arch: str = ""
    namespace: str = ""  # maven group id
    # as declared while a layer is analysed (and cached); SPDX expressions in a ScanResult
    # (engine.licenses.normalise)
    licenses: tuple[str, ...] = ()
    distro: str = ""  # "debian-12", set on OS packages once the image's OS is known

    @property
    def purl(self) -> str:
        return package_purl(self)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.ecosystem, self.namespace, self.name, self.version)


# Package URLs (purl spec), built with packageurl-python
_DISTRO_NAMESPACE = {"deb": "debian", "apk": "alpine", "rpm": ""}


def package_purl(pkg: Package) -> str:
    qualifiers: dict[str, str] = {}
    namespace = pkg.namespace or None
    eco = str(pkg.ecosystem)
    if eco in _DISTRO_NAMESPACE:
        namespace = pkg.distro.split("-")[0] or _DISTRO_NAMESPACE[eco] or None
        if pkg.arch:
            qualifiers["arch"] = pkg.arch
        if pkg.distro:
            qualifiers["distro"] = pkg.distro
        if pkg.source_name and pkg.source_name != pkg.name:
            qualifiers["upstream" if eco == "rpm" else "source"] = pkg.source_name
    name = pkg.name
    if eco == "golang" and "/" in name:
        namespace, _, name = name.rpartition("/")
    if eco == "pypi":
        name = name.lower().replace("_", "-")
    return PackageURL(type=eco, namespace=namespace, name=name, version=pkg.version,
                      qualifiers=qualifiers or None).to_string()


@dataclass(frozen=True, slots=True)
class VulnFinding:
    id: str
    package: Package
    severity: Severity
    fixed_version: str = ""
    aliases: tuple[str, ...] = ()
    summary: str = ""
    source: str = ""  # "osv", "debian-tracker", "alpine-secdb"
    cvss_score: float | None = None
    severity_source: str = ""  # who rated it: the vendor's source(s), or "nvd"; "" unrated

    @property
    def fixable(self) -> bool:
        return bool(self.fixed_version)


@dataclass(frozen=True, slots=True)
class SecretFinding:
    rule: str
    title: str
    severity: Severity
    path: str
    layer: str
    line: int
    masked: str  # the matched text with all but a short prefix replaced by '*'
    deleted_later: bool = False  # the file is removed by a later layer but still in the image


@dataclass(frozen=True, slots=True)
class MalwareFinding:
    rule: str  # yara rule name or "sha256"
    path: str
    layer: str
    sha256: str
    severity: Severity = Severity.CRITICAL
    deleted_later: bool = False


@dataclass(frozen=True, slots=True)
class ConfigFinding:
    rule: str
    title: str
    severity: Severity
    detail: str = ""


# Hostile layer entries (refused, never used): rule -> (severity, title). An entry that
# only a crafted image holds and that attacks whoever extracts it (a runtime, a CI step
# running `tar x`) is high; an absolute path (some old tools wrote them) is medium; a
# FIFO is harmless to an extractor but has no place in an image: low.
UNSAFE_ENTRY_RULES: dict[str, tuple[Severity, str]] = {
    "path-traversal": (Severity.HIGH, "path traversal ('..') in a layer entry"),
    "nul-in-path": (Severity.HIGH, "NUL byte in a layer entry's path"),
    "symlink-escape": (Severity.HIGH, "symlink pointing outside the image root"),
    "hardlink-escape": (Severity.HIGH, "hard link to a path outside the image root"),
    "hardlink-dangling": (Severity.MEDIUM, "hard link to a path not earlier in its layer"),
    "device-file": (Severity.HIGH, "character or block device in a layer"),
    "absolute-path": (Severity.MEDIUM, "absolute path in a layer entry"),
    "fifo": (Severity.LOW, "FIFO in a layer"),
    "unsafe-entry": (Severity.HIGH, "unsafe layer entry"),
}


@dataclass(frozen=True, slots=True)
class EntryFinding:
    """A hostile layer entry the scanner refused (docs/scanner.md "How layers are read")."""

    rule: str  # a key of UNSAFE_ENTRY_RULES
    severity: Severity
    path: str  # as written in the tar header (may be absolute, hold "..")
    layer: str
    detail: str = ""  # the refusal, with the link target where there is one

    @property
    def title(self) -> str:
        return UNSAFE_ENTRY_RULES.get(self.rule, UNSAFE_ENTRY_RULES["unsafe-entry"])[1]


@dataclass(frozen=True, slots=True)
class ScanWarning:
    """Something the scanner refused or skipped (unsafe entry, oversized file)."""

    reason: str
    layer: str = ""
    path: str = ""


@dataclass(slots=True)
class LayerResult:
    """Everything a single layer determines; cached by layer digest."""

    digest: str
    files: dict[str, list[Package]] = field(default_factory=dict)  # path -> packages in it
    whiteouts: list[str] = field(default_factory=list)  # paths deleted (".wh.x" -> "x")
    opaque_dirs: list[str] = field(default_factory=list)  # ".wh..wh..opq" directories
    present: set[str] = field(default_factory=set)  # every path this layer writes
    secrets: list[SecretFinding] = field(default_factory=list)
    malware: list[MalwareFinding] = field(default_factory=list)
    warnings: list[ScanWarning] = field(default_factory=list)
    unsafe_entries: list[EntryFinding] = field(default_factory=list)
    # declared licenses found outside package databases: path -> raw license names
    # (Debian's usr/share/doc/<package>/copyright), applied to packages after merging
    license_files: dict[str, list[str]] = field(default_factory=dict)
    os_release: OSRelease | None = None
    size: int = 0  # uncompressed bytes


@dataclass(frozen=True, slots=True)
class ImageConfig:
    user: str = ""
    env: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    os: str = ""
    architecture: str = ""
    history: tuple[str, ...] = ()


@dataclass(slots=True)
class ScanResult:
    image: str  # what the user named
    digest: str  # manifest digest (sha256:...)
    config_digest: str
    layers: list[str]
    config: ImageConfig
    os: OSRelease | None
    packages: list[Package]
    vulnerabilities: list[VulnFinding] = field(default_factory=list)
    secrets: list[SecretFinding] = field(default_factory=list)
    malware: list[MalwareFinding] = field(default_factory=list)
    config_findings: list[ConfigFinding] = field(default_factory=list)
    warnings: list[ScanWarning] = field(default_factory=list)
    unsafe_entries: list[EntryFinding] = field(default_factory=list)
    repo_tags: tuple[str, ...] = ()
