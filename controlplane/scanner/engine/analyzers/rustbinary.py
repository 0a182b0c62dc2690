"""Rust binaries built with cargo-auditable: the ``.dep-v0`` ELF section holds the
dependency tree as zlib-compressed JSON. Only crates.io packages are reported (local
path and git dependencies have no registry version to match).

``analyze_file`` reads the ELF header, the section header table and ``.dep-v0`` only."""

from __future__ import annotations

import json
import logging
import zlib

from moray.controlplane.scanner.engine.analyzers.elf import (
    ELF_MAGIC,
    ReadAt,
    bytes_reader,
    find_sections,
    parse_header,
)
from moray.controlplane.scanner.engine.model import Ecosystem, Package

log = logging.getLogger(__name__)

SECTION = b".dep-v0"
MAX_JSON = 8 << 20


class RustAuditableAnalyzer:
    name = "rustbinary"
    magic = ELF_MAGIC

    def wants(self, path: str, mode: int, size: int) -> bool:
        return bool(mode & 0o111) and size > 1024

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        return self.analyze_file(path, bytes_reader(data), len(data), layer)

    def analyze_file(self, path: str, read_at: ReadAt, size: int, layer: str) -> list[Package]:
        header = parse_header(read_at(0, min(64, size)))
        found = find_sections(read_at, size, header, (SECTION,)) if header else None
        where = found.get(SECTION) if found else None
        if where is None:
            return []
        section = read_at(where.offset, where.size)
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(section, MAX_JSON)
            doc = json.loads(raw)
        except (zlib.error, ValueError) as err:
            log.debug("unreadable .dep-v0 section", extra={"path": path, "error": str(err)})
            return []
        return [
            Package(Ecosystem.CARGO, str(p["name"]), str(p["version"]), path, layer)
            for p in doc.get("packages", [])
            if isinstance(p, dict) and p.get("name") and p.get("version")
            and p.get("source", "crates.io") == "crates.io"
        ]
