"""Minimal ELF reading for the binary analyzers: named sections and virtual addresses."""

from __future__ import annotations

import struct

PT_LOAD = 1


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
