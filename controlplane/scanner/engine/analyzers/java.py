"""Java archives (jar/war/ear): Maven pom.properties, else the manifest; nested jars once."""

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
        packages: list[Package] = []
        with zf:
            infos = zf.infolist()[:MAX_MEMBERS]
            for info in infos:
                if info.filename.startswith("META-INF/maven/") and info.filename.endswith(
                    "/pom.properties"
                ) and info.file_size < 1 << 20:
                    props = _properties(zf.read(info).decode("utf-8", "replace"))
                    if props.get("groupId") and props.get("artifactId") and props.get("version"):
                        packages.append(Package(Ecosystem.MAVEN, props["artifactId"],
                                                props["version"], path, layer,
                                                namespace=props["groupId"]))
            if not packages:
                packages.extend(self._from_manifest(zf, path, layer))
            if depth == 0:
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

    def _from_manifest(self, zf: zipfile.ZipFile, path: str, layer: str) -> list[Package]:
        try:
            info = zf.getinfo("META-INF/MANIFEST.MF")
        except KeyError:
            return []
        if info.file_size > 1 << 20:
            return []
        fields = _manifest(zf.read(info).decode("utf-8", "replace"))
        # the file name is the most reliable artifact id ("asm-9.2.jar"); titles are prose
        stem = posixpath.basename(path.rsplit("!/", 1)[-1]).rsplit(".", 1)[0]
        m = _NAME_VERSION.match(stem)
        artifact, file_version = (m.group(1), m.group(2)) if m else (stem, "")
        version = (fields.get("Implementation-Version") or fields.get("Bundle-Version")
                   or file_version)
        symbolic = (fields.get("Bundle-SymbolicName") or "").split(";")[0].strip()
        group = fields.get("Implementation-Vendor-Id") or symbolic
        if not version.strip() or not artifact:
            return []
        # "2.0.8 2003-12-28 11:00:13" (oro): the version is the first word
        return [Package(Ecosystem.MAVEN, artifact, version.split()[0], path, layer,
                        namespace=group)]
