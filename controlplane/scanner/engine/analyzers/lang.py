"""Language package metadata: Python dist-info/egg-info, npm package.json, Cargo.lock."""

from __future__ import annotations

import json
import logging
import posixpath
import re

from moray.controlplane.scanner.engine.model import Ecosystem, Package

log = logging.getLogger(__name__)

_PY_DIRS = ("site-packages/", "dist-packages/")


class PythonAnalyzer:
    """``*.dist-info/METADATA``, ``*.egg-info/PKG-INFO`` and single-file ``*.egg-info``."""

    name = "python"

    def wants(self, path: str, mode: int, size: int) -> bool:
        if not any(d in path for d in _PY_DIRS):
            return False
        parent = posixpath.dirname(path)
        base = posixpath.basename(path)
        if base == "METADATA":
            return parent.endswith(".dist-info")
        if base == "PKG-INFO":
            return parent.endswith(".egg-info")
        return base.endswith(".egg-info")  # a file, not a directory (dirs are not FILE entries)

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        headers = metadata_headers(data)
        name, version = headers.get("name"), headers.get("version")
        if not name or not version:
            return []
        return [Package(Ecosystem.PYPI, name.strip(), version.strip(), path, layer,
                        licenses=python_licenses(data, headers))]


def python_licenses(data: bytes, headers: dict[str, str]) -> tuple[str, ...]:
    """PEP 639 ``License-Expression``, else the ``License ::`` trove classifiers (their
    last segment), else a short one-line ``License`` field (often it holds the whole
    license text, which names nothing)."""
    expression = headers.get("license-expression", "").strip()
    if expression:
        return (expression,)
    classifiers = tuple(
        line.split("::")[-1].strip() for line in _header_lines(data, "classifier")
        if line.startswith("License ::") and line.count("::") >= 2
        and line.split("::")[-1].strip() != "OSI Approved")
    if classifiers:
        return classifiers
    lic = headers.get("license", "").strip()
    return (lic,) if lic and "\n" not in lic and len(lic) < 100 else ()


def _header_lines(data: bytes, key: str) -> list[str]:
    """Every value of a repeated header (``Classifier``) in the header block."""
    out = []
    prefix = key + ":"
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        if not line.strip():
            break
        if line[:len(prefix)].lower() == prefix:
            out.append(line[len(prefix):].strip())
    return out


def metadata_headers(data: bytes) -> dict[str, str]:
    """The header block of a METADATA / PKG-INFO file (RFC 822 style), keys lowercased,
    first occurrence kept, continuation lines joined with a newline as ``email`` does.
    Not ``email.parser``: importing it (socket, calendar, ...) cost ~17 ms of every scan
    of an image with Python packages.
    """
    out: dict[str, str] = {}
    key = ""
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        if not line.strip():
            break  # the body (the long description) starts after a blank line
        if line[0] in " \t":
            if key:
                out[key] += "\n" + line
            continue
        name, sep, value = line.partition(":")
        if not sep:
            break  # not a header: email.parser ends the headers here too
        key = name.strip().lower()
        if key in out:
            key = ""  # a repeated header: the first one counts
            continue
        out[key] = value.lstrip(" \t")
    return out


_NPM_PATH = re.compile(r"(?:^|/)node_modules/(@[^/]+/[^/]+|[^@/][^/]*)/package\.json$")


class NpmAnalyzer:
    """``node_modules/<name>/package.json`` (also scoped ``@scope/name``)."""

    name = "npm"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path.endswith("/package.json") and _NPM_PATH.search(path) is not None

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        try:
            doc = json.loads(data)
        except ValueError:
            log.debug("unparsable package.json", extra={"path": path})
            return []
        if not isinstance(doc, dict):
            return []
        name, version = doc.get("name"), doc.get("version")
        if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
            return []
        licenses = npm_licenses(doc)
        namespace, _, short = name.rpartition("/")
        return [Package(Ecosystem.NPM, short, version, path, layer, namespace=namespace,
                        licenses=licenses)]


def npm_licenses(doc: dict[str, object]) -> tuple[str, ...]:
    """``license``: an SPDX expression, or (deprecated) ``{"type": ...}``; ``licenses``:
    a list of those."""
    given = doc.get("license") or doc.get("licenses")
    items = given if isinstance(given, list) else [given]
    out = []
    for item in items:
        value = item.get("type") if isinstance(item, dict) else item
        if isinstance(value, str) and value.strip() and len(value) < 200:
            out.append(value.strip())
    return tuple(out)


class CargoLockAnalyzer:
    name = "cargo"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return posixpath.basename(path) == "Cargo.lock"

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        import tomllib  # only images with a Cargo.lock need it

        try:
            doc = tomllib.loads(data.decode("utf-8", "replace"))
        except tomllib.TOMLDecodeError:
            log.debug("unparsable Cargo.lock", extra={"path": path})
            return []
        packages = []
        for entry in doc.get("package", []):
            if isinstance(entry, dict) and entry.get("name") and entry.get("version"):
                packages.append(Package(Ecosystem.CARGO, str(entry["name"]),
                                        str(entry["version"]), path, layer))
        return packages
