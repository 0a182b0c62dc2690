"""OS package databases: dpkg status (and distroless status.d), apk installed, rpm sqlite."""

from __future__ import annotations

import logging
import re
import sqlite3
import struct

from moray.controlplane.scanner.engine.analyzers.bdb import BDBError, hash_values, is_bdb_hash
from moray.controlplane.scanner.engine.model import Ecosystem, Package

log = logging.getLogger(__name__)


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """RFC 822-style paragraphs (dpkg status); continuation lines are folded in."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t":
            if key:
                current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


_SOURCE_RE = re.compile(r"^(\S+)(?:\s+\((\S+)\))?$")


class DpkgAnalyzer:
    name = "dpkg"

    def wants(self, path: str, mode: int, size: int) -> bool:
        if path == "var/lib/dpkg/status":
            return True
        if path.startswith("var/lib/dpkg/status.d/"):
            return not path.endswith(".md5sums")
        return False

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        packages = []
        for st in parse_stanzas(data.decode("utf-8", "replace")):
            name, version = st.get("Package"), st.get("Version")
            if not name or not version:
                continue
            status = st.get("Status", "install ok installed")
            if "installed" not in status.split() or "not-installed" in status:
                continue
            source_name, source_version = name, version
            if st.get("Source"):
                m = _SOURCE_RE.match(st["Source"])
                if m:
                    source_name = m.group(1)
                    source_version = m.group(2) or version
            packages.append(
                Package(
                    Ecosystem.DEB, name, version, path, layer,
                    source_name=source_name, source_version=source_version,
                    arch=st.get("Architecture", ""),
                )
            )
        return packages


# Debian: the licenses of package P are declared in usr/share/doc/P/copyright, in the
# machine-readable format (DEP-5: "License: <short name>" in each paragraph) or as prose
# that points at /usr/share/common-licenses/<name>
DEB_COPYRIGHT = re.compile(r"^usr/share/doc/([^/]+)/copyright$")
_DEP5_LICENSE = re.compile(r"^License:[ \t]*(\S.*?)\s*$", re.MULTILINE)
_COMMON_LICENSE = re.compile(
    r"/usr/share/common-licenses/(GPL-[123]|LGPL-2\.1|LGPL-[23]|Apache-2\.0|Artistic|"
    r"BSD|MPL-1\.1|MPL-2\.0|GFDL-1\.[23]|CC0-1\.0)\b")


def copyright_licenses(data: bytes) -> list[str]:
    """The license short names a Debian copyright file declares, in order, distinct."""
    text = data.decode("utf-8", "replace")
    found = [m.group(1) for m in _DEP5_LICENSE.finditer(text)]
    if not found:
        found = ["BSD-3" if m.group(1) == "BSD" else m.group(1)
                 for m in _COMMON_LICENSE.finditer(text)]
    return list(dict.fromkeys(f for f in found if len(f) < 200))


class ApkAnalyzer:
    name = "apk"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path == "lib/apk/db/installed"

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        packages = []
        for block in data.decode("utf-8", "replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in block.splitlines():
                if len(line) > 2 and line[1] == ":" and line[0] not in fields:
                    fields[line[0]] = line[2:]
            if "P" in fields and "V" in fields:
                licenses = tuple(fields["L"].split()) if fields.get("L") else ()
                packages.append(
                    Package(
                        Ecosystem.APK, fields["P"], fields["V"], path, layer,
                        source_name=fields.get("o", fields["P"]), source_version=fields["V"],
                        arch=fields.get("A", ""), licenses=licenses,
                    )
                )
        return packages


# rpm header tags and types (rpm's lib/rpmtag.h)
RPMTAG_NAME, RPMTAG_VERSION, RPMTAG_RELEASE, RPMTAG_EPOCH = 1000, 1001, 1002, 1003
RPMTAG_LICENSE, RPMTAG_ARCH, RPMTAG_SOURCERPM = 1014, 1022, 1044
RPM_INT32, RPM_STRING, RPM_STRING_ARRAY, RPM_I18NSTRING = 4, 6, 8, 9
_SRPM_RE = re.compile(r"^(.+)-([^-]+)-([^-]+)\.(?:no)?src\.rpm$")


def parse_rpm_header(blob: bytes) -> dict[int, str | int]:
    """The tags we need from an rpm header blob as stored in rpmdb.sqlite."""
    if len(blob) < 8:
        raise ValueError("rpm header too short")
    count, data_len = struct.unpack(">II", blob[:8])
    index_end = 8 + 16 * count
    if count > 100_000 or index_end + data_len > len(blob):
        raise ValueError("rpm header index out of bounds")
    data = blob[index_end:index_end + data_len]
    wanted = {RPMTAG_NAME, RPMTAG_VERSION, RPMTAG_RELEASE, RPMTAG_EPOCH, RPMTAG_ARCH,
              RPMTAG_SOURCERPM, RPMTAG_LICENSE}
    tags: dict[int, str | int] = {}
    for i in range(count):
        tag, typ, offset, _cnt = struct.unpack(">iIiI", blob[8 + 16 * i: 24 + 16 * i])
        if tag not in wanted or not 0 <= offset < len(data):
            continue
        if typ == RPM_INT32:
            tags[tag] = struct.unpack(">i", data[offset:offset + 4])[0]
        elif typ in (RPM_STRING, RPM_STRING_ARRAY, RPM_I18NSTRING):
            end = data.find(b"\x00", offset)
            tags[tag] = data[offset:end if end >= 0 else None].decode("utf-8", "replace")
    return tags


RPMDB_PATHS = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite",
               "var/lib/rpm/Packages", "usr/lib/sysimage/rpm/Packages")


def _sqlite_blobs(data: bytes) -> list[bytes]:
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(data)
        return [bytes(r[0]) for r in conn.execute("SELECT blob FROM Packages")]
    finally:
        conn.close()


class RpmAnalyzer:
    """rpm databases: sqlite (rpm >= 4.16) and Berkeley DB hash (``Packages``, rpm < 4.16)."""

    name = "rpm"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path in RPMDB_PATHS

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        try:
            if data.startswith(b"SQLite format 3\0"):
                blobs = _sqlite_blobs(data)
            elif is_bdb_hash(data):
                blobs = list(hash_values(data))
            else:
                log.warning("unsupported rpm database format (NDB?)", extra={"path": path})
                return []
        except (sqlite3.DatabaseError, BDBError, struct.error) as err:
            log.warning("unreadable rpm database", extra={"path": path, "layer": layer,
                                                          "error": str(err)})
            return []
        packages = []
        for blob in blobs:
            if len(blob) < 16:
                continue  # the Berkeley DB "Packages" keeps a counter record under key 0
            try:
                tags = parse_rpm_header(bytes(blob))
            except (ValueError, struct.error) as err:
                log.warning("bad rpm header", extra={"path": path, "error": str(err)})
                continue
            name, ver, rel = tags.get(RPMTAG_NAME), tags.get(RPMTAG_VERSION), tags.get(
                RPMTAG_RELEASE)
            if not name or not ver or str(name).startswith("gpg-pubkey"):
                continue
            epoch = tags.get(RPMTAG_EPOCH)
            version = f"{ver}-{rel}" if rel else str(ver)
            if epoch not in (None, 0):
                version = f"{epoch}:{version}"
            source_name, source_version = str(name), version
            m = _SRPM_RE.match(str(tags.get(RPMTAG_SOURCERPM, "")))
            if m:
                source_name = m.group(1)
                source_version = f"{m.group(2)}-{m.group(3)}"
                if epoch not in (None, 0):
                    source_version = f"{epoch}:{source_version}"
            lic = tags.get(RPMTAG_LICENSE)
            packages.append(
                Package(
                    Ecosystem.RPM, str(name), version, path, layer,
                    source_name=source_name, source_version=source_version,
                    arch=str(tags.get(RPMTAG_ARCH, "")), licenses=(str(lic),) if lic else (),
                )
            )
        return packages
