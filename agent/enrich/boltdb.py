"""Read-only reader for bbolt (BoltDB) files: podman's ``libpod/bolt_state.db``.

Podman 4 keeps a container's configuration (labels among it) only in its bolt database,
not in a JSON state file.  This module reads such a file as bytes -- no mmap, no locks,
nothing written -- and walks it from the newer of the two meta pages:

* page header: ``id u64, flags u16, count u16, overflow u32`` (a page spans
  ``overflow + 1`` page sizes);
* meta (pages 0 and 1): ``magic, version, page size, flags, root bucket {root, seq},
  freelist, pgid, txid, checksum`` (FNV-1a 64 of the preceding 56 bytes);
* branch elements ``pos u32, ksize u32, pgid u64``; leaf elements ``flags u32, pos u32,
  ksize u32, vsize u32`` (flag 1: the value is a bucket ``{root u64, seq u64}``, root 0
  meaning an inline bucket whose page follows the header).

A file caught mid-write or damaged raises :class:`BoltError`; callers retry later.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from moray.errors import KernelError

MAGIC = 0xED0CDAED
_PAGE = struct.Struct("<QHHI")
_META = struct.Struct("<IIII QQ QQQ Q")
_BRANCH = struct.Struct("<IIQ")
_LEAF = struct.Struct("<IIII")
_BUCKET = struct.Struct("<QQ")
BRANCH, LEAF, META = 0x01, 0x02, 0x04
BUCKET_LEAF = 0x01
MAX_DEPTH = 64


class BoltError(KernelError, ValueError):
    """The bytes are not a consistent bolt database (or not one at all)."""


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class BoltFile:
    """One snapshot of a bolt file's bytes; :meth:`get` reads a value by bucket path."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.page_size, self.root = self._meta()
        self._budget = 0

    @classmethod
    def open(cls, path: str) -> BoltFile:
        with open(path, "rb") as fh:
            return cls(fh.read())

    def _meta(self) -> tuple[int, int]:
        best: tuple[int, int, int] | None = None  # (txid, page size, root)
        offset = 0
        for _ in range(2):
            end = offset + _PAGE.size + _META.size
            if end > len(self.data):
                break
            _pid, flags, _n, _ov = _PAGE.unpack_from(self.data, offset)
            body = offset + _PAGE.size
            (magic, _ver, psize, _fl, root, _seq, _free, _pgid, txid,
             csum) = _META.unpack_from(self.data, body)
            valid = (flags & META and magic == MAGIC and psize >= 512
                     and csum == _fnv1a64(self.data[body:body + _META.size - 8]))
            if valid and (best is None or txid > best[0]):
                best = (txid, psize, root)
            offset = psize if valid else 4096  # the second meta page is one page later
        if best is None:
            raise BoltError("no valid meta page")
        return best[1], best[2]

    def _page(self, pgid: int) -> tuple[int, int, int]:
        """(offset, flags, count) of page *pgid*, bounds-checked."""
        self._budget -= 1
        if self._budget < 0:
            raise BoltError("page references loop")
        off = pgid * self.page_size
        if pgid < 2 or off + _PAGE.size > len(self.data):
            raise BoltError(f"page {pgid} outside the file")
        pid, flags, count, overflow = _PAGE.unpack_from(self.data, off)
        if pid != pgid or off + (overflow + 1) * self.page_size > len(self.data):
            raise BoltError(f"page {pgid}: inconsistent header")
        return off, flags, count

    def _items(self, data: bytes, off: int, flags: int, count: int,
               depth: int) -> Iterator[tuple[bytes, bytes, int]]:
        """(key, value, leaf flags) of the page at *off* in *data*, in key order."""
        if depth > MAX_DEPTH:
            raise BoltError("tree too deep (a loop?)")
        base = off + _PAGE.size
        if flags & BRANCH:
            for i in range(count):
                elem = base + i * _BRANCH.size
                _pos, _ksize, child = _BRANCH.unpack_from(data, elem)
                c_off, c_flags, c_count = self._page(child)
                yield from self._items(self.data, c_off, c_flags, c_count, depth + 1)
        elif flags & LEAF:
            for i in range(count):
                elem = base + i * _LEAF.size
                lflags, pos, ksize, vsize = _LEAF.unpack_from(data, elem)
                k0 = elem + pos
                if k0 + ksize + vsize > len(data):
                    raise BoltError("leaf element outside its page")
                yield data[k0:k0 + ksize], data[k0 + ksize:k0 + ksize + vsize], lflags
        else:
            raise BoltError(f"unexpected page flags {flags:#x}")

    def _bucket_items(self, value: bytes | None,
                      depth: int) -> Iterator[tuple[bytes, bytes, int]]:
        """Items of a bucket whose header is *value* (None: the root bucket)."""
        if value is None:
            off, flags, count = self._page(self.root)
            yield from self._items(self.data, off, flags, count, depth)
            return
        if len(value) < _BUCKET.size:
            raise BoltError("short bucket header")
        root, _seq = _BUCKET.unpack_from(value, 0)
        if root == 0:  # inline bucket: its page follows the header
            page = value[_BUCKET.size:]
            if len(page) < _PAGE.size:
                return
            _pid, flags, count, _ov = _PAGE.unpack_from(page, 0)
            yield from self._items(page, 0, flags, count, depth)
            return
        off, flags, count = self._page(root)
        yield from self._items(self.data, off, flags, count, depth)

    def bucket(self, path: Sequence[bytes]) -> dict[bytes, bytes | None] | None:
        """Keys of the bucket at *path* -> value (None for a nested bucket); None when
        the bucket does not exist."""
        self._budget = 4 * (len(self.data) // self.page_size + 1)  # pages one walk may visit
        try:
            return self._bucket(path)
        except struct.error as err:  # an element pointing past its (inline) page
            raise BoltError(str(err)) from err

    def _bucket(self, path: Sequence[bytes]) -> dict[bytes, bytes | None] | None:
        header: bytes | None = None
        for depth, name in enumerate(path):
            found = None
            for key, value, lflags in self._bucket_items(header, depth):
                if key == name and lflags & BUCKET_LEAF:
                    found = value
                    break
            if found is None:
                return None
            header = found
        return {k: (None if f & BUCKET_LEAF else v)
                for k, v, f in self._bucket_items(header, len(path))}

    def get(self, path: Sequence[bytes], key: bytes) -> bytes | None:
        """The value of *key* in the bucket at *path*, or None."""
        items = self.bucket(path)
        return items.get(key) if items is not None else None
