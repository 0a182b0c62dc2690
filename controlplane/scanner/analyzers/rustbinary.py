"""Rust binaries built with cargo-auditable: the ``.dep-v0`` ELF section holds the
dependency tree as zlib-compressed JSON. Only crates.io packages are reported (local
path and git dependencies have no registry version to match)."""

from __future__ import annotations

import json
import logging
import struct
import zlib

from controlplane.scanner.model import Ecosystem, Package

log = logging.getLogger(__name__)

SECTION = b".dep-v0"
MAX_JSON = 8 << 20


def elf_section(data: bytes, name: bytes) -> bytes | None:
    """The content of a named section of an ELF file, or None."""
    if len(data) < 64 or not data.startswith(b"\x7fELF"):
        return None
    is64, little = data[4] == 2, data[5] == 1
    end = "<" if little else ">"
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
        fmt, off_idx, size_idx = end + "IIQQQQIIQQ", 4, 5
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)
        fmt, off_idx, size_idx = end + "IIIIIIIIII", 4, 5
    if shnum == 0 or shnum > 4096 or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        return None
    headers = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx]
    str_off, str_size = strtab[off_idx], strtab[size_idx]
    names = data[str_off:str_off + str_size]
    for h in headers:
        start = h[0]
        if names[start:start + len(name) + 1] == name + b"\0":
            off, size = h[off_idx], h[size_idx]
            if off + size > len(data):
                return None
            return data[off:off + size]
    return None


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
