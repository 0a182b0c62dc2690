"""Import advisory files or directory trees (and OSV zip exports) into the store.

Each file's format is recognised from its content. One source record is replaced as a
whole (a re-import never duplicates rows); a file that fails to parse is counted and
logged with its path, and the import goes on.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moray.controlplane.scanner.errors import VulnDBError
from moray.controlplane.store.scanstore import ScanStore
from moray.controlplane.vulndb.formats import (
    Parsed,
    parse_alpine_secdb,
    parse_debian_tracker,
    parse_nvd,
    parse_osv,
)

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 << 20
_ALPINE_NAME = re.compile(r"(?:^|/)v?(\d+\.\d+)(?:-|/)")


@dataclass
class ImportReport:
    files: int = 0
    records: int = 0
    rows: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    by_format: dict[str, int] = field(default_factory=dict)


def detect_and_parse(doc: Any, name: str) -> tuple[str, str, Parsed]:
    """(format, origin id, records) for one decoded document."""
    if isinstance(doc, dict) and "Header" in doc and "Annotations" in doc:
        parsed = parse_debian_tracker(doc)
        return "debian-tracker", str(doc["Header"]["ID"]), parsed
    if isinstance(doc, dict) and ("secfixes" in doc or ("packages" in doc and
                                                        "distroversion" in doc)):
        m = _ALPINE_NAME.search(name)
        hint = m.group(1) if m else ""
        origin = f"{doc.get('distroversion', hint)}/{doc.get('reponame', '')}/" + (
            str(doc.get("name", "")) or Path(name).stem)
        return "alpine-secdb", origin, parse_alpine_secdb(doc, origin, release_hint=hint)
    if isinstance(doc, dict) and str(doc.get("id", "")).startswith("CVE-") and (
            "metrics" in doc or "vulnStatus" in doc):
        return "nvd", str(doc["id"]), parse_nvd(doc)
    if isinstance(doc, dict) and "id" in doc and ("affected" in doc or "modified" in doc):
        return "osv", str(doc["id"]), parse_osv(doc)
    raise ValueError("unrecognised advisory format")


def _records(decoded: Any) -> list[Any]:
    """The records of one file: a JSON list, an NVD API answer or feed file
    (``{"vulnerabilities": [{"cve": {...}}, ...]}``), or one record."""
    if isinstance(decoded, list):
        return decoded
    if isinstance(decoded, dict) and isinstance(decoded.get("vulnerabilities"), list) \
            and "id" not in decoded:
        return [v["cve"] if isinstance(v, dict) and "cve" in v else v
                for v in decoded["vulnerabilities"]]
    return [decoded]


def _documents(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and not p.is_symlink() and p.suffix in (".json", ".yaml", ".yml",
                                                                   ".zip"):
                yield from _documents(p)
        return
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".json") and info.file_size <= MAX_FILE_BYTES:
                    yield f"{path}!{info.filename}", zf.read(info)
        return
    if path.stat().st_size > MAX_FILE_BYTES:
        raise VulnDBError(f"file larger than {MAX_FILE_BYTES} bytes", path=str(path))
    yield str(path), path.read_bytes()


def import_path(path: Path, store: ScanStore) -> ImportReport:
    if not path.exists():
        raise VulnDBError("no such file or directory", path=str(path))
    report = ImportReport()
    with store.transaction():
        for name, data in _documents(path):
            if name.endswith(("SOURCES.md",)):
                continue
            report.files += 1
            try:
                decoded = (yaml.safe_load(data) if name.endswith((".yaml", ".yml"))
                           else json.loads(data))
                docs = _records(decoded)
                for doc in docs:
                    fmt, origin, (advisories, rows) = detect_and_parse(doc, name)
                    source = rows[0].source if rows else fmt
                    report.rows += store.replace_origin(source, origin, advisories, rows)
                    report.records += 1
                    report.by_format[fmt] = report.by_format.get(fmt, 0) + 1
            except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as err:
                report.skipped += 1
                report.errors.append(f"{name}: {err}")
                log.warning("advisory file skipped", extra={"path": name, "error": str(err)})
        store.record_import(str(path), report.records, report.rows, report.skipped)
    return report
