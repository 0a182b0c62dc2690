"""The webhook's settings: the command line names the server, the token and the TLS files;
a YAML file (``--config``) holds the rest. ``load`` checks every field and says which is
wrong (``ConfigError`` naming the file and the field).

Defaults are the safe ones: enforce (not monitor), deny what has no verdict, fail closed
when the server cannot be asked, ``kube-system`` and the webhook's own namespace excluded.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moray.errors import ConfigError

DEFAULT_NAMESPACE = "moray"


class Mode(enum.StrEnum):
    ENFORCE = "enforce"   # deny what fails
    MONITOR = "monitor"   # allow everything; what would be denied comes back as warnings


class Unregistered(enum.StrEnum):
    DENY = "deny"    # no verdict: denied, the message says how to register the image
    ALLOW = "allow"  # no verdict: allowed, with a warning and an audit entry
    SCAN = "scan"    # no verdict: ask the server to scan now, wait up to the scan budget


class Failure(enum.StrEnum):
    CLOSED = "closed"  # the server (or the registry) cannot answer: deny
    OPEN = "open"      # ... allow, with a warning and an audit entry


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    insecure: bool = False   # plain HTTP (loopback registries only, as for the scanner)
    credentials: str = ""    # '', env:NAME or file:/path (controlplane/scanner/service/credentials)


@dataclass(frozen=True, slots=True)
class EnforcerConfig:
    server: str
    token: str
    ca: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None         # require API server client certificates from it
    cert_from_server: bool = False        # tls_cert/tls_key issued and renewed by the server
    host: str = "0.0.0.0"
    port: int = 8443
    cluster: str = "default"
    namespace: str = DEFAULT_NAMESPACE
    mode: Mode = Mode.ENFORCE
    unregistered: Unregistered = Unregistered.DENY
    failure: Failure = Failure.CLOSED
    policies: tuple[str, ...] = ()        # assurance policies that must pass; (): every one stored
    scan_policy: str = ""                 # ImageAssurancePolicy text for scans on admission
    scan_budget: float = 7.0              # seconds a request waits for a scan it asked for
    exclude_namespaces: tuple[str, ...] = ("kube-system",)
    exclude_labels: dict[str, str] = field(default_factory=dict)
    registries: dict[str, RegistrySettings] = field(default_factory=dict)
    platform: tuple[str, str] = ("linux", "amd64")
    verdict_ttl: float = 30.0             # a verdict is asked again after this long
    unregistered_ttl: float = 3.0         # ... an answer "no verdict" after this long
    tag_ttl: float = 30.0                 # a tag is resolved again after this long
    max_stale: float = 600.0              # server away: verdicts up to this old still count
    server_timeout: float = 2.0           # per request to the server
    request_timeout: float = 8.0          # a whole review; what is not known by then: unknown
    registry_timeout: float = 3.0         # per request to a registry

    @property
    def excluded_namespaces(self) -> frozenset[str]:
        return frozenset({*self.exclude_namespaces, self.namespace})

    def registry(self, host: str) -> RegistrySettings:
        return self.registries.get(host, RegistrySettings())


_KEYS = {"cluster", "namespace", "mode", "unregistered", "failurePolicy", "policies", "scan",
         "excludeNamespaces", "excludeLabels", "registries", "platform", "verdictTTL",
         "unregisteredTTL", "tagTTL", "maxStale", "serverTimeout", "registryTimeout",
         "requestTimeout"}


def _enum(kind: type[enum.StrEnum], value: Any, where: str) -> Any:
    try:
        return kind(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ConfigError(f"{where}: {value!r} is not one of {allowed}") from None


def _seconds(doc: dict[str, Any], key: str, default: float, where: str) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}: {key}: a number of seconds >= 0")
    return float(value)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: a list of non-empty strings")
    return tuple(value)


def _read(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not YAML: {err}") from err
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: must be a mapping")
    return loaded or {}


def _scan_policy(scan: Any, where: str) -> str:
    if not isinstance(scan, dict) or set(scan) - {"policy", "policyFile", "budget"}:
        raise ConfigError(f"{where}: scan: a mapping of policy, policyFile, budget")
    text = str(scan.get("policy") or "")
    if scan.get("policyFile"):
        try:
            text = Path(str(scan["policyFile"])).read_text()
        except OSError as err:
            raise ConfigError(f"{where}: scan.policyFile: {err}") from err
    if text:
        from moray.controlplane.scanner.service.scheduler import check_policy
        from moray.errors import ScanError

        try:
            check_policy(text)
        except ScanError as err:
            raise ConfigError(f"{where}: scan.policy: {err}") from err
    return text


def _registries(raw: Any, where: str) -> dict[str, RegistrySettings]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: registries: a mapping of host[:port] to settings")
    out: dict[str, RegistrySettings] = {}
    for host, settings in raw.items():
        s = settings or {}
        if not isinstance(s, dict) or set(s) - {"insecure", "credentials"}:
            raise ConfigError(f"{where}: registries.{host}: insecure and credentials only")
        out[str(host)] = RegistrySettings(bool(s.get("insecure", False)),
                                          str(s.get("credentials") or ""))
    return out


def load(path: Path | None, **flags: Any) -> EnforcerConfig:
    """The settings of ``path`` (None: defaults) under the command line's ``flags``."""
    doc = _read(path)
    where = str(path) if path else "config"
    unknown = set(doc) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys: {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(_KEYS))})")
    scan = doc.get("scan") or {}
    scan_policy = _scan_policy(scan, where)
    labels = doc.get("excludeLabels") or {}
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ConfigError(f"{where}: excludeLabels: a mapping of label names to values")
    platform = str(doc.get("platform", "linux/amd64"))
    os_name, _, arch = platform.partition("/")
    if not os_name or not arch:
        raise ConfigError(f"{where}: platform: OS/ARCH, e.g. linux/amd64")
    namespace = str(doc.get("namespace") or os.environ.get("POD_NAMESPACE") or
                    DEFAULT_NAMESPACE)
    config = EnforcerConfig(
        cluster=str(doc.get("cluster", "default")), namespace=namespace,
        mode=_enum(Mode, doc.get("mode", "enforce"), f"{where}: mode"),
        unregistered=_enum(Unregistered, doc.get("unregistered", "deny"),
                           f"{where}: unregistered"),
        failure=_enum(Failure, doc.get("failurePolicy", "closed"), f"{where}: failurePolicy"),
        policies=_strings(doc.get("policies", []), f"{where}: policies"),
        scan_policy=scan_policy,
        scan_budget=_seconds(scan, "budget", 7.0, f"{where}: scan"),
        exclude_namespaces=_strings(doc.get("excludeNamespaces", ["kube-system"]),
                                    f"{where}: excludeNamespaces"),
        exclude_labels=dict(labels), registries=_registries(doc.get("registries") or {}, where),
        platform=(os_name, arch),
        verdict_ttl=_seconds(doc, "verdictTTL", 30.0, where),
        unregistered_ttl=_seconds(doc, "unregisteredTTL", 3.0, where),
        tag_ttl=_seconds(doc, "tagTTL", 30.0, where),
        max_stale=_seconds(doc, "maxStale", 600.0, where),
        server_timeout=_seconds(doc, "serverTimeout", 2.0, where),
        registry_timeout=_seconds(doc, "registryTimeout", 3.0, where),
        request_timeout=_seconds(doc, "requestTimeout", 8.0, where),
        **flags)
    if config.scan_budget >= config.request_timeout and config.unregistered is \
            Unregistered.SCAN:
        raise ConfigError(f"{where}: scan.budget ({config.scan_budget:g}) must be below "
                          f"requestTimeout ({config.request_timeout:g})")
    if config.unregistered is Unregistered.SCAN and not config.scan_policy:
        raise ConfigError(f"{where}: unregistered: scan needs scan.policy or scan.policyFile "
                          "(the ImageAssurancePolicy the scan is judged by)")
    return config
