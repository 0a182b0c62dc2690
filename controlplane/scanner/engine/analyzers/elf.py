"""Minimal ELF reading for the binary analyzers: named sections and virtual addresses.

The section readers take a ``ReadAt`` (offset, size -> bytes, short or empty past the end of
the file) rather than the whole file, so an analyzer can read the ELF header, the section
header table and the one section it needs from a layer without reading the file whole
(a Python extension module costs its headers only). ``bytes_reader`` adapts bytes already
in memory. Every read is clamped to the file: offsets and sizes taken from the file are
checked against its size before use.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass

log = logging.getLogger(__name__)

PT_LOAD = 1
ELF_MAGIC = b"\x7fELF"
MAX_SECTIONS = 4096
MAX_SHSTRTAB = 1 << 20

ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class ElfHeader:
    is64: bool
    end: str  # struct byte order, "<" or ">"
    shoff: int
    shentsize: int
    shnum: int
    shstrndx: int


@dataclass(frozen=True, slots=True)
class Section:
    offset: int
    size: int


def bytes_reader(data: bytes) -> ReadAt:
    """A ``ReadAt`` over bytes already read."""
    def read_at(offset: int, size: int) -> bytes:
        return data[offset:offset + size] if offset >= 0 and size > 0 else b""
    return read_at


def parse_header(head: bytes) -> ElfHeader | None:
    """The section-table fields of an ELF header (the file's first 64 bytes), or None when
    ``head`` is not a complete ELF32/ELF64 header."""
    if not head.startswith(ELF_MAGIC) or len(head) < 52 or head[4] not in (1, 2):
        return None
    end = "<" if head[5] == 1 else ">"
    if head[4] == 2:
        if len(head) < 64:
            return None
        shoff, = struct.unpack_from(end + "Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", head, 0x3A)
        return ElfHeader(True, end, shoff, shentsize, shnum, shstrndx)
    shoff, = struct.unpack_from(end + "I", head, 0x20)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", head, 0x2E)
    return ElfHeader(False, end, shoff, shentsize, shnum, shstrndx)


def find_sections(read_at: ReadAt, size: int, header: ElfHeader,
                  names: Collection[bytes]) -> dict[bytes, Section] | None:
    """The sections called ``names`` (first of each name) whose data lies inside the file.

    None when the file has no usable section header table (none, more than 4096 entries,
    or a table reaching past the end of the file): callers that can fall back on another
    way (Go) do so. Sections pointing past the end are left out, with a log line.
    """
    fmt = header.end + ("IIQQQQIIQQ" if header.is64 else "IIIIIIIIII")
    entsize = struct.calcsize(fmt)
    if (header.shnum == 0 or header.shnum > MAX_SECTIONS or header.shstrndx >= header.shnum
            or header.shentsize < entsize or header.shoff <= 0
            or header.shoff + header.shnum * header.shentsize > size):
        return None
    table = read_at(header.shoff, header.shnum * header.shentsize)
    if len(table) < header.shnum * header.shentsize:
        return None
    # name offset, type, flags, addr, offset, size, ...: offset and size are fields 4 and 5
    rows = [struct.unpack_from(fmt, table, i * header.shentsize) for i in range(header.shnum)]
    str_off, str_size = rows[header.shstrndx][4], rows[header.shstrndx][5]
    strtab = read_at(str_off, min(str_size, MAX_SHSTRTAB, size - str_off)) \
        if str_off < size else b""
    found: dict[bytes, Section] = {}
    for row in rows:
        end = strtab.find(b"\0", row[0])
        name = strtab[row[0]:end] if end >= 0 else b""
        if name not in names or name in found:
            continue
        off, length = row[4], row[5]
        if off + length > size:
            log.debug("ELF section past the end of the file",
                      extra={"section": name.decode("ascii", "replace"), "offset": off,
                             "size": length, "file_size": size})
            continue
        found[name] = Section(off, length)
    return found


def elf_section(data: bytes, name: bytes) -> bytes | None:
    """The content of a named section of an ELF file in memory, or None."""
    header = parse_header(data[:64])
    if header is None:
        return None
    found = find_sections(bytes_reader(data), len(data), header, (name,))
    section = found.get(name) if found else None
    return data[section.offset:section.offset + section.size] if section else None


def _layout(data: bytes) -> tuple[bool, str] | None:
    if len(data) < 64 or not data.startswith(b"\x7fELF"):
        return None
    return data[4] == 2, "<" if data[5] == 1 else ">"


def read_va(data: bytes, addr: int, size: int) -> bytes | None:
    """``size`` bytes at virtual address ``addr``, through the PT_LOAD segments."""
    layout = _layout(data)
    if layout is None or size < 0:
        return None
    is64, end = layout
    if is64:
        phoff, = struct.unpack_from(end + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
        fmt = end + "IIQQQQQQ"  # type flags offset vaddr paddr filesz memsz align
    else:
        phoff, = struct.unpack_from(end + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
        fmt = end + "IIIIIIII"  # type offset vaddr paddr filesz memsz flags align
    if phnum > 4096 or phoff + phnum * phentsize > len(data):
        return None
    for i in range(phnum):
        ph = struct.unpack_from(fmt, data, phoff + i * phentsize)
        if ph[0] != PT_LOAD:
            continue
        offset, vaddr, filesz = (ph[2], ph[3], ph[5]) if is64 else (ph[1], ph[2], ph[4])
        if vaddr <= addr and addr + size <= vaddr + filesz:
            start = offset + addr - vaddr
            return data[start:start + size] if start + size <= len(data) else None
    return None
