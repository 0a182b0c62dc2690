"""Java archives (jar/war/ear): Maven coordinates, nested jars once.

Order of trust: ``META-INF/maven/<g>/<a>/pom.properties`` (every one: a shaded jar holds
its dependencies' too), else that directory's ``pom.xml`` (or the directory names);
then the manifest (``MANIFEST.MF``), used when no Maven coordinates name the jar itself
(a jar whose file name says ``foo-1.0`` and that holds only shaded ``bar``'s
pom.properties is both). Versions are cleaned (quotes, a trailing ``(…)`` or date, a
``-release-N`` build tag when the file name agrees) and must look like a version (start
with a digit, no spaces); a manifest version that does not falls back to the file name's.
Licenses come from pom.xml ``<licenses>`` and the manifest's ``Bundle-License``.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
import zlib
from typing import TYPE_CHECKING

from moray.controlplane.scanner.engine.model import Ecosystem, Package

if TYPE_CHECKING:
    import zipfile

log = logging.getLogger(__name__)

_ARCHIVE_EXT = (".jar", ".war", ".ear", ".par")
_NAME_VERSION = re.compile(r"^(.+?)-(\d[\w.+-]*)$")
MAX_NESTED_BYTES = 64 << 20  # one nested archive
MAX_NESTED_TOTAL = 512 << 20  # all nested archives of one file (zip-bomb bound)
MAX_MEMBERS = 100_000


def _properties(text: str) -> dict[str, str]:
    props = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def _manifest(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith(" ") and key:
            fields[key] += line[1:]
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


_VERSION = re.compile(r"^\d[\w.+~-]*$")
_POM_DIR = re.compile(r"^META-INF/maven/([^/]+)/([^/]+)/(pom\.properties|pom\.xml)$")


def clean_version(raw: str) -> str:
    """A Maven version from a manifest or properties value, or "" when it is none:
    ``"1.6"`` -> 1.6; ``1.8.21-release-380(1.8.21)`` -> 1.8.21-release-380;
    ``2.0.8 2003-12-28`` -> 2.0.8; ``task``, ``${project.version}`` -> ""."""
    v = raw.strip().strip("\"'").strip()
    v = v.split("(")[0].strip()
    v = v.split()[0] if v.split() else ""
    return v if _VERSION.match(v) else ""


def _group_from_manifest(fields: dict[str, str], artifact: str) -> str:
    """The groupId a manifest names, if any: Implementation-Vendor-Id, else the OSGi
    Bundle-SymbolicName. Not Automatic-Module-Name or Extension-Name: they are Java
    package names (``org.apache.commons.lang3`` for ``org.apache.commons``), and a wrong
    group is worse than none."""
    vendor = (fields.get("Implementation-Vendor-Id") or "").strip()
    if vendor:
        return vendor
    symbolic = (fields.get("Bundle-SymbolicName") or "").split(";")[0].strip()
    return symbolic if "." in symbolic else ""


# a jar in a Maven repository or Gradle's cache: the path names the coordinates
_M2_PATH = re.compile(r"(?:^|/)\.m2/repository/(.+)/([^/]+)/([^/]+)/\2-\3[^/]*\.jar$")
_GRADLE_PATH = re.compile(r"(?:^|/)files-2\.1/([^/]+)/([^/]+)/([^/]+)/[0-9a-f]+/\2-\3[^/]*\.jar$")


def group_from_path(path: str, artifact: str) -> str:
    for pattern, dotted in ((_M2_PATH, True), (_GRADLE_PATH, False)):
        m = pattern.search(path)
        if m and m.group(2) == artifact:
            return m.group(1).replace("/", ".") if dotted else m.group(1)
    return ""


def _pom_xml(data: bytes) -> tuple[dict[str, str], tuple[str, ...]]:
    """groupId, artifactId, version (the parent's version when absent) and license names
    from a pom.xml; nothing when it does not parse."""
    import xml.etree.ElementTree as ET  # only images with pom.xml files need it

    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return {}, ()

    def child(node: ET.Element | None, name: str) -> ET.Element | None:
        if node is None:
            return None
        for c in node:
            if c.tag.rsplit("}", 1)[-1] == name:
                return c
        return None

    def text(node: ET.Element | None, name: str) -> str:
        c = child(node, name)
        return (c.text or "").strip() if c is not None else ""

    parent = child(root, "parent")
    licenses = child(root, "licenses")
    names = [text(lic, "name") for lic in licenses] if licenses is not None else []
    # not the parent's groupId: META-INF/maven/<groupId>/ names the artifact's own
    return ({"groupId": text(root, "groupId"),
             "artifactId": text(root, "artifactId"),
             "version": text(root, "version") or text(parent, "version")},
            tuple(n for n in names if n))


class JavaArchiveAnalyzer:
    name = "java"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path.lower().endswith(_ARCHIVE_EXT)

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        return self._archive(path, data, layer, depth=0)

    def _archive(self, path: str, data: bytes, layer: str, depth: int) -> list[Package]:
        import zipfile  # only images with archives need it (~4 ms of start-up)

        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, OSError):
            log.debug("not a zip archive", extra={"path": path})
            return []
        with zf:
            infos = zf.infolist()[:MAX_MEMBERS]
            packages = self._from_maven(zf, infos, path, layer)
            own = self._from_manifest(zf, path, layer)
            if own is not None and not any(p.name == own.name for p in packages) and (
                    not packages or _NAME_VERSION.match(_stem(path))):
                packages.append(own)
            if depth == 0:
                packages.extend(self._nested(zf, infos, path, layer, depth))
        return packages

    def _from_maven(self, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], path: str,
                    layer: str) -> list[Package]:
        found: dict[tuple[str, str], dict[str, str]] = {}
        licenses_of: dict[tuple[str, str], tuple[str, ...]] = {}
        for info in infos:
            m = _POM_DIR.match(info.filename)
            if m is None or info.file_size >= 1 << 20:
                continue
            key = (m.group(1), m.group(2))
            entry = found.setdefault(key, {})
            data = zf.read(info)
            if m.group(3) == "pom.properties":
                props = _properties(data.decode("utf-8", "replace"))
                entry.update({k: v for k, v in props.items()
                              if k in ("groupId", "artifactId", "version") and v})
            else:
                pom, licenses_of[key] = _pom_xml(data)
                for name in ("groupId", "artifactId", "version"):
                    if pom.get(name):
                        entry.setdefault(name, pom[name])
        packages = []
        for (group_dir, artifact_dir), entry in found.items():
            licenses = licenses_of.get((group_dir, artifact_dir), ())
            group = str(entry.get("groupId") or "")
            artifact = str(entry.get("artifactId") or "")
            if "${" in group or not group:
                group = group_dir
            if "${" in artifact or not artifact:
                artifact = artifact_dir
            version = clean_version(str(entry.get("version") or ""))
            if not version:
                log.debug("maven coordinates without a usable version",
                          extra={"path": path, "artifact": artifact})
                continue
            packages.append(Package(Ecosystem.MAVEN, artifact, version, path, layer,
                                    namespace=group, licenses=licenses))
        return packages

    def _nested(self, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], path: str,
                layer: str, depth: int) -> list[Package]:
        import zipfile

        packages: list[Package] = []
        budget = MAX_NESTED_TOTAL
        for info in infos:
            if not info.filename.lower().endswith(_ARCHIVE_EXT):
                continue
            if info.file_size > min(MAX_NESTED_BYTES, budget):
                log.warning("nested archive skipped: size limit",
                            extra={"path": path, "member": info.filename})
                continue
            budget -= info.file_size
            nested = f"{path}!/{info.filename}"
            try:
                content = zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
                log.debug("unreadable nested archive", extra={"path": nested,
                                                              "error": str(err)})
                continue
            packages.extend(self._archive(nested, content, layer, depth + 1))
        return packages

    def _from_manifest(self, zf: zipfile.ZipFile, path: str, layer: str) -> Package | None:
        try:
            info = zf.getinfo("META-INF/MANIFEST.MF")
        except KeyError:
            return None
        if info.file_size > 1 << 20:
            return None
        fields = _manifest(zf.read(info).decode("utf-8", "replace"))
        # the file name is the most reliable artifact id ("asm-9.2.jar"); titles are prose
        m = _NAME_VERSION.match(_stem(path))
        artifact, file_version = (m.group(1), clean_version(m.group(2))) if m else (
            _stem(path), "")
        stated = clean_version(fields.get("Implementation-Version") or "") or clean_version(
            fields.get("Bundle-Version") or "")
        # "1.8.21-release-380" beside kotlin-stdlib-1.8.21.jar: the file names the release
        if file_version and (not stated or stated.startswith(file_version + "-")):
            version = file_version
        else:
            version = stated or file_version
        if not version or not artifact:
            return None
        lic = (fields.get("Bundle-License") or "").split(";")[0].strip()
        group = group_from_path(path, artifact) or _group_from_manifest(fields, artifact)
        return Package(Ecosystem.MAVEN, artifact, version, path, layer, namespace=group,
                       licenses=(lic,) if lic else ())


def _stem(path: str) -> str:
    return posixpath.basename(path.rsplit("!/", 1)[-1]).rsplit(".", 1)[0]
