"""Rust binaries built with cargo-auditable: the ``.dep-v0`` ELF section holds the
dependency tree as zlib-compressed JSON. Only crates.io packages are reported (local
path and git dependencies have no registry version to match)."""

from __future__ import annotations

import json
import logging
import zlib

from controlplane.scanner.analyzers.elf import elf_section
from controlplane.scanner.model import Ecosystem, Package

log = logging.getLogger(__name__)

SECTION = b".dep-v0"
MAX_JSON = 8 << 20


class RustAuditableAnalyzer:
    name = "rustbinary"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return bool(mode & 0o111) and size > 1024

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        section = elf_section(data, SECTION)
        if section is None:
            return []
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
