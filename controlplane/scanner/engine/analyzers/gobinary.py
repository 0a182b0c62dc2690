"""Go binaries: module build info embedded by the Go toolchain (``go version -m``).

Reads the Go 1.18+ inline format (the ``\\xff Go buildinf:`` header, then varint-prefixed
toolchain version and module info strings) and the older pointer format (Go 1.13-1.17:
pointers to Go string headers, resolved through the ELF PT_LOAD segments).

``analyze_file`` reads only what it needs: the ELF header, the section header table and
the ``.go.buildinfo`` section (the Go linker has written it since Go 1.13; 1.18+ holds the
whole build info inline). An ELF with a section table but no such section is not a Go
binary and costs nothing more. Files without a usable section table (odd or stripped ELFs,
section tables past the end) and the pointer format are read whole and searched for the
build-info magic, as ``analyze`` does with bytes.
"""

from __future__ import annotations

import logging
import struct

from moray.controlplane.scanner.engine.analyzers.elf import (
    ELF_MAGIC,
    ReadAt,
    bytes_reader,
    find_sections,
    parse_header,
    read_va,
)
from moray.controlplane.scanner.engine.model import Ecosystem, Package

log = logging.getLogger(__name__)

BUILDINFO_MAGIC = b"\xff Go buildinf:"
FLAG_INLINE = 0x2
SECTION = b".go.buildinfo"
MAX_SECTION = 16 << 20


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
            return _pointer_buildinfo(data, header)
        start = idx + 1


def _inline_section(data: bytes) -> tuple[str, str] | None:
    """Inline build info at the start of a ``.go.buildinfo`` section; None unless the
    section starts with an inline header and holds both strings whole."""
    if len(data) < 32 or not data.startswith(BUILDINFO_MAGIC) or not data[15] & FLAG_INLINE:
        return None
    try:
        vlen, pos = _uvarint(data, 32)
        version = data[pos:pos + vlen]
        pos += vlen
        mlen, pos = _uvarint(data, pos)
    except ValueError:
        return None
    if pos + mlen > len(data):
        return None
    mod = data[pos:pos + mlen]
    if len(mod) >= 33 and mod[-17:-16] == b"\n":
        mod = mod[16:-16]
    return version.decode("utf-8", "replace"), mod.decode("utf-8", "replace")


def buildinfo_at(read_at: ReadAt, size: int) -> tuple[str, str] | None:
    """(go version, module info text) of an ELF file read through ``read_at``, or None."""
    head = read_at(0, min(64, size))
    if not head.startswith(ELF_MAGIC):
        return None
    header = parse_header(head)
    sections = find_sections(read_at, size, header, (SECTION,)) if header else None
    if sections is not None:
        section = sections.get(SECTION)
        if section is None:
            return None  # a section table without .go.buildinfo: not a Go 1.13+ binary
        info = _inline_section(read_at(section.offset, min(section.size, MAX_SECTION)))
        if info is not None:
            return info
    # no usable section table, or pre-1.18 pointers into other sections: the whole file
    return read_buildinfo(read_at(0, size))


def _pointer_buildinfo(data: bytes, header: bytes) -> tuple[str, str] | None:
    """Go < 1.18: the header holds pointers to two Go string headers (data ptr, length)."""
    ptr_size = header[14]
    end = ">" if header[15] & 1 else "<"
    if ptr_size not in (4, 8):
        return None
    fmt = end + ("Q" if ptr_size == 8 else "I")

    def read_string(ptr_addr: int) -> str | None:
        head = read_va(data, ptr_addr, 2 * ptr_size)
        if head is None:
            return None
        addr, = struct.unpack_from(fmt, head, 0)
        length, = struct.unpack_from(fmt, head, ptr_size)
        if length > 1 << 20:
            return None
        raw = read_va(data, addr, length)
        return raw.decode("utf-8", "replace") if raw is not None else None

    version_ptr, = struct.unpack_from(fmt, header, 16)
    mod_ptr, = struct.unpack_from(fmt, header, 16 + ptr_size)
    version = read_string(version_ptr)
    mod = read_string(mod_ptr)
    if version is None or mod is None:
        log.debug("pre-1.18 Go build info pointers do not resolve")
        return None
    if len(mod) >= 33 and mod[-17] == "\n":
        mod = mod[16:-16]
    return version, mod


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
    magic = ELF_MAGIC

    def wants(self, path: str, mode: int, size: int) -> bool:
        return bool(mode & 0o111) and size > 1024

    def analyze(self, path: str, data: bytes, layer: str) -> list[Package]:
        return self.analyze_file(path, bytes_reader(data), len(data), layer)

    def analyze_file(self, path: str, read_at: ReadAt, size: int, layer: str) -> list[Package]:
        info = buildinfo_at(read_at, size)
        if info is None:
            return []
        return [
            Package(Ecosystem.GOLANG, mod, ver.removeprefix("v") if mod == "stdlib" else ver,
                    path, layer)
            for mod, ver in parse_modinfo(*info)
        ]
