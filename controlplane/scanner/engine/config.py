"""Image configuration: parse the OCI/docker config and find risky settings (low severity)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from moray.controlplane.scanner.engine.model import ConfigFinding, ImageConfig, Severity

if TYPE_CHECKING:
    from moray.controlplane.scanner.engine.protocols import SecretScanner

SECRET_ENV_NAME = re.compile(
    r"(PASSW(OR)?D|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|CREDENTIALS?)", re.I
)
SAFE_ENV_VALUE = re.compile(r"^(|/[\w./-]*|true|false|yes|no|\d+|\$\{?\w+\}?)$", re.I)


def image_config(doc: dict[str, Any]) -> ImageConfig:
    cfg = doc.get("config") or doc.get("container_config") or {}
    return ImageConfig(
        user=str(cfg.get("User") or ""),
        env=tuple(cfg.get("Env") or ()),
        labels=dict(cfg.get("Labels") or {}),
        exposed_ports=tuple(sorted((cfg.get("ExposedPorts") or {}).keys())),
        entrypoint=tuple(cfg.get("Entrypoint") or ()),
        cmd=tuple(cfg.get("Cmd") or ()),
        os=str(doc.get("os", "")),
        architecture=str(doc.get("architecture", "")),
        history=tuple(str(h.get("created_by", "")) for h in doc.get("history") or ()),
    )


def mask(value: str, keep: int = 4) -> str:
    if len(value) <= keep:
        return "*" * len(value)
    return value[:keep] + "*" * min(len(value) - keep, 16)


def runs_as_root(user: str) -> bool:
    name = user.split(":", maxsplit=1)[0].strip()
    return name in ("", "root", "0")


def config_findings(cfg: ImageConfig, secrets: SecretScanner | None = None) -> list[ConfigFinding]:
    findings = []
    if runs_as_root(cfg.user):
        findings.append(ConfigFinding(
            "CFG001", "image runs as root", Severity.LOW,
            f"USER is {cfg.user!r}" if cfg.user else "no USER set (defaults to root)",
        ))
    for item in cfg.env:
        name, _, value = item.partition("=")
        hit = bool(SECRET_ENV_NAME.search(name)) and not SAFE_ENV_VALUE.match(value)
        if not hit and secrets is not None and value:
            hit = bool(secrets.scan_file("<env>", item.encode(), ""))
        if hit:
            findings.append(ConfigFinding(
                "CFG002", "secret in environment variable", Severity.LOW,
                f"{name}={mask(value)}",
            ))
    for port in cfg.exposed_ports:
        if port.split("/")[0] in ("22", "23"):
            findings.append(ConfigFinding("CFG003", "remote shell port exposed", Severity.LOW,
                                          port))
    for step in cfg.history:
        if re.search(r"\b(curl|wget)\b[^|]*\|\s*(ba)?sh\b", step):
            findings.append(ConfigFinding("CFG004", "build step pipes a download into a shell",
                                          Severity.LOW, step[:200]))
    return findings
