"""Go binaries: module build info embedded by the Go toolchain (``go version -m``).

Reads the Go 1.18+ inline format: the ``\\xff Go buildinf:`` header, then varint-prefixed
toolchain version and module info strings. Older pointer-based binaries (Go < 1.18) are
skipped with a debug log: resolving their pointers needs ELF segment mapping.
"""

from __future__ import annotations

import logging

from controlplane.scanner.model import Ecosystem, Package

log = logging.getLogger(__name__)

BUILDINFO_MAGIC = b"\xff Go buildinf:"
FLAG_INLINE = 0x2
ELF_MAGIC = b"\x7fELF"


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("bad varint")


def read_buildinfo(data: bytes) -> tuple[str, str] | None:
    """(go version, module info text) from a Go binary, or None."""
    start = 0
    while True:
        idx = data.find(BUILDINFO_MAGIC, start)
        if idx < 0:
            return None
        header = data[idx:idx + 32]
        if len(header) == 32 and header[15] & FLAG_INLINE:
            try:
                vlen, pos = _uvarint(data, idx + 32)
                version = data[pos:pos + vlen].decode("utf-8", "replace")
                pos += vlen
                mlen, pos = _uvarint(data, pos)
                mod = data[pos:pos + mlen]
            except ValueError:
                return None
            if len(mod) >= 33 and mod[-17:-16] == b"\n":
                mod = mod[16:-16]
            return version, mod.decode("utf-8", "replace")
        if len(header) == 32:
            log.debug("pre-1.18 Go build info (pointer format) not read")
            return None
        start = idx + 1


def parse_modinfo(version: str, modinfo: str) -> list[tuple[str, str]]:
    """(module path, version) pairs, stdlib first; replacements (``=>``) win."""
    mods: list[tuple[str, str]] = []
    if version.startswith("go"):
        mods.append(("stdlib", version[2:].split(maxsplit=1)[0].split("-", maxsplit=1)[0]))
    for line in modinfo.splitlines():
        parts = line.split("\t")
        if parts[0] in ("mod", "dep") and len(parts) >= 3:
            mods.append((parts[1], parts[2]))
        elif parts[0] == "=>" and len(parts) >= 3 and mods:
            mods[-1] = (parts[1], parts[2])
    return [(p, v) for p, v in mods if v and v != "(devel)"]


class GoBinaryAnalyzer:
    name = "gobinary"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return bool(mode & 0o111) and size > 1024

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        if not data.startswith(ELF_MAGIC):
            return []
        info = read_buildinfo(data)
        if info is None:
            return []
        return [
            Package(Ecosystem.GOLANG, mod, ver.removeprefix("v") if mod == "stdlib" else ver,
                    path, layer)
            for mod, ver in parse_modinfo(*info)
        ]
