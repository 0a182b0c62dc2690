"""Read-only Berkeley DB *hash* files, as rpm < 4.16 stores ``/var/lib/rpm/Packages``.

Only what the rpm database needs: walk every hash page, yield each value (the rpm header
blob), following overflow-page chains for large values. Layout from Berkeley DB's
``dbinc/db_page.h``: a 72-byte metadata page 0 (magic 0x061561, page size, last page), then
pages with a 26-byte header, an index of item offsets, and items stored from the end of
the page. Keys and values alternate in the index.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from moray.errors import ScanError

HASH_MAGIC = 0x061561
PAGE_HEADER = 26
P_HASH_UNSORTED, P_OVERFLOW, P_HASH = 2, 7, 13
H_KEYDATA, H_OFFPAGE = 1, 3
MAX_VALUE = 64 << 20


class BDBError(ScanError, ValueError):
    """Not a Berkeley DB hash file, or a corrupt one."""


def is_bdb_hash(data: bytes) -> bool:
    if len(data) < 72:
        return False
    return any(struct.unpack_from(e + "I", data, 12)[0] == HASH_MAGIC for e in "<>")


def hash_values(data: bytes) -> Iterator[bytes]:
    if len(data) < 72:
        raise BDBError("file too short for a Berkeley DB metadata page")
    end = next((e for e in "<>" if struct.unpack_from(e + "I", data, 12)[0] == HASH_MAGIC), "")
    if not end:
        raise BDBError("not a Berkeley DB hash database")
    page_size, = struct.unpack_from(end + "I", data, 20)
    last_page, = struct.unpack_from(end + "I", data, 32)
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise BDBError(f"bad page size {page_size}")
    npages = min(last_page + 1, len(data) // page_size)
    for pgno in range(1, npages):
        page = data[pgno * page_size:(pgno + 1) * page_size]
        entries, = struct.unpack_from(end + "H", page, 20)
        if page[25] not in (P_HASH, P_HASH_UNSORTED) or entries * 2 + PAGE_HEADER > page_size:
            continue
        offsets = struct.unpack_from(end + f"{entries}H", page, PAGE_HEADER)
        for i in range(1, entries, 2):  # values are the odd items
            off = offsets[i]
            if off >= page_size:
                raise BDBError(f"item offset outside page {pgno}")
            kind = page[off]
            if kind == H_KEYDATA:
                item_end = offsets[i - 1] if i > 0 else page_size
                yield page[off + 1:item_end]
            elif kind == H_OFFPAGE:
                first, total = struct.unpack_from(end + "II", page, off + 4)
                yield _overflow(data, page_size, first, total, end)


def _overflow(data: bytes, page_size: int, pgno: int, total: int, end: str) -> bytes:
    if total > MAX_VALUE:
        raise BDBError(f"value of {total} bytes")
    out = bytearray()
    seen = set()
    while pgno and len(out) < total:
        if pgno in seen or (pgno + 1) * page_size > len(data):
            raise BDBError(f"bad overflow chain at page {pgno}")
        seen.add(pgno)
        page = data[pgno * page_size:(pgno + 1) * page_size]
        next_pgno, = struct.unpack_from(end + "I", page, 16)
        used, = struct.unpack_from(end + "H", page, 22)  # hf_offset: bytes on this page
        out += page[PAGE_HEADER:PAGE_HEADER + used]
        pgno = next_pgno
    return bytes(out[:total])
