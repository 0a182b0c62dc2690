"""Reading BTF (from a built .bpf.o or the kernel) through libbpf.

Two users: the ABI check (the Python mirror of each C record must have the same member
offsets and sizes as the struct in the object's BTF) and the loader (offsets of `const
volatile` settings inside .rodata). Needs no privileges: btf__parse reads the ELF file.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from moray.agent.bpf import libbpf
from moray.agent.bpf.libbpf import BTF_KIND_DATASEC, BTF_KIND_STRUCT, BTF_KIND_UNION
from moray.errors import KernelError


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    offset: int  # bytes
    size: int    # bytes (0 for a flexible array)


class BtfError(KernelError, LookupError):
    """A type or section the caller expected is not in the BTF."""


class Btf:
    """A parsed BTF blob. Close it (or use `with`) to free libbpf's copy."""

    def __init__(self, path: str) -> None:
        self._lib = libbpf.lib()
        self._ptr = libbpf.check_ptr(self._lib.btf__parse(path.encode(), None),
                                     f"btf__parse({path})")
        self.path = path

    def close(self) -> None:
        if self._ptr:
            self._lib.btf__free(self._ptr)
            self._ptr = 0

    def __enter__(self) -> Btf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _find(self, name: str, kind: int) -> int:
        tid = int(self._lib.btf__find_by_name_kind(self._ptr, name.encode(), kind))
        if tid < 0:
            raise BtfError(f"{name!r} (kind {kind}) not in BTF of {self.path}")
        return tid

    def _name(self, off: int) -> str:
        raw: bytes | None = self._lib.btf__name_by_offset(self._ptr, off)
        return (raw or b"").decode()

    def struct_members(self, name: str) -> tuple[int, list[Member]]:
        """(size, members) of `struct name`; member sizes resolved through typedefs."""
        try:
            tid = self._find(name, BTF_KIND_STRUCT)
        except BtfError:
            tid = self._find(name, BTF_KIND_UNION)
        t = self._lib.btf__type_by_id(self._ptr, tid)
        vlen = t.contents.info & 0xFFFF
        kflag = t.contents.info >> 31
        base = ctypes.addressof(t.contents) + ctypes.sizeof(libbpf.BtfType)
        members: list[Member] = []
        for i in range(vlen):
            m = libbpf.BtfMember.from_address(base + i * ctypes.sizeof(libbpf.BtfMember))
            bits = m.offset & 0xFFFFFF if kflag else m.offset
            size = int(self._lib.btf__resolve_size(self._ptr, m.type))
            members.append(Member(self._name(m.name_off), bits // 8, max(size, 0)))
        return int(t.contents.size_or_type), members

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int]]:
        """name -> (offset, size) of each variable in a data section such as .rodata."""
        tid = self._find(section, BTF_KIND_DATASEC)
        t = self._lib.btf__type_by_id(self._ptr, tid)
        vlen = t.contents.info & 0xFFFF
        base = ctypes.addressof(t.contents) + ctypes.sizeof(libbpf.BtfType)
        out: dict[str, tuple[int, int]] = {}
        for i in range(vlen):
            v = libbpf.BtfVarSecinfo.from_address(
                base + i * ctypes.sizeof(libbpf.BtfVarSecinfo))
            var = self._lib.btf__type_by_id(self._ptr, v.type)
            out[self._name(var.contents.name_off)] = (int(v.offset), int(v.size))
        return out

    def enum_values(self, name: str) -> dict[str, int]:
        """Enumerators of `enum name`."""
        tid = self._find(name, libbpf.BTF_KIND_ENUM)
        t = self._lib.btf__type_by_id(self._ptr, tid)
        vlen = t.contents.info & 0xFFFF
        base = ctypes.addressof(t.contents) + ctypes.sizeof(libbpf.BtfType)
        out: dict[str, int] = {}
        for i in range(vlen):
            name_off, val = (ctypes.c_uint32 * 2).from_address(base + i * 8)
            out[self._name(name_off)] = ctypes.c_int32(val).value
        return out

    def has(self, name: str, kind: int = BTF_KIND_STRUCT) -> bool:
        try:
            self._find(name, kind)
        except BtfError:
            return False
        return True
