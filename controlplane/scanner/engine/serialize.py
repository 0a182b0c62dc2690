"""JSON forms of the records, for the layer cache and the JSON report."""

from __future__ import annotations

import dataclasses
from typing import Any

from moray.controlplane.scanner.engine.model import (
    Ecosystem,
    EntryFinding,
    LayerResult,
    MalwareFinding,
    OSRelease,
    Package,
    ScanWarning,
    SecretFinding,
    Severity,
)

_FIELDS: dict[type, tuple[str, ...]] = {}  # public field names per dataclass


def _fields(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls)
                                     if not f.name.startswith("_"))
    return names


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {name: to_jsonable(getattr(obj, name)) for name in _fields(type(obj))}
        if isinstance(obj, Package):
            out["purl"] = obj.purl
        return out
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, set):
        return sorted(to_jsonable(v) for v in obj)
    return obj


def layer_to_json(layer: LayerResult) -> dict[str, Any]:
    return {
        "digest": layer.digest,
        # no purl: it is dropped on load, and the distro it names is known only after merging
        "files": {p: [{name: to_jsonable(getattr(pkg, name)) for name in _fields(Package)}
                      for pkg in pkgs] for p, pkgs in layer.files.items()},
        "whiteouts": layer.whiteouts,
        "opaque_dirs": layer.opaque_dirs,
        "present": sorted(layer.present),
        "secrets": [to_jsonable(s) for s in layer.secrets],
        "malware": [to_jsonable(m) for m in layer.malware],
        "warnings": [to_jsonable(w) for w in layer.warnings],
        "unsafe_entries": [to_jsonable(e) for e in layer.unsafe_entries],
        "license_files": layer.license_files,
        "os_release": to_jsonable(layer.os_release) if layer.os_release else None,
        "size": layer.size,
    }


def _package(d: dict[str, Any]) -> Package:
    d = {k: v for k, v in d.items() if k != "purl"}
    d["ecosystem"] = Ecosystem(d["ecosystem"])
    d["licenses"] = tuple(d.get("licenses", ()))
    return Package(**d)


def layer_from_json(d: dict[str, Any]) -> LayerResult:
    return LayerResult(
        digest=d["digest"],
        files={p: [_package(x) for x in pkgs] for p, pkgs in d["files"].items()},
        whiteouts=list(d["whiteouts"]),
        opaque_dirs=list(d["opaque_dirs"]),
        present=set(d["present"]),
        secrets=[SecretFinding(**{**s, "severity": Severity(s["severity"])}) for s in d["secrets"]],
        malware=[MalwareFinding(**{**m, "severity": Severity(m["severity"])})
                 for m in d["malware"]],
        warnings=[ScanWarning(**w) for w in d["warnings"]],
        unsafe_entries=[EntryFinding(**{**e, "severity": Severity(e["severity"])})
                        for e in d.get("unsafe_entries", ())],
        license_files={p: list(v) for p, v in d.get("license_files", {}).items()},
        os_release=OSRelease(**d["os_release"]) if d.get("os_release") else None,
        size=int(d.get("size", 0)),
    )
