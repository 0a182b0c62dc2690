"""The mmap ring-buffer consumer against a simulated ring (an anonymous mapping laid out
like the kernel's): batches, busy and discarded records, and records that wrap around the
end of the data area (which we map once, not twice)."""

from __future__ import annotations

import mmap
import struct

from moray.agent.bpf import ringbuf
from moray.agent.bpf.ringbuf import BUSY_BIT, DISCARD_BIT, RingBuffer

SIZE = 4096


class FakeRing(RingBuffer):
    def __init__(self) -> None:  # no map fd: plain anonymous memory, same layout
        page = mmap.PAGESIZE
        self._page = page
        self._mask = SIZE - 1
        self._cons = mmap.mmap(-1, page)
        self._prod = mmap.mmap(-1, page + SIZE)
        self._view = memoryview(self._prod)
        self._map_positions()
        self.size = SIZE
        self.prod_pos = 0

    def write(self, payload: bytes, flags: int = 0) -> None:
        off = self.prod_pos & self._mask
        struct.pack_into("<II", self._prod, self._page + off, len(payload) | flags, 0)
        for i, b in enumerate(payload):
            self._prod[self._page + ((off + 8 + i) & self._mask)] = b
        self.prod_pos += (len(payload) + 8 + 7) & ~7
        struct.pack_into("<Q", self._prod, 0, self.prod_pos)

    def close(self) -> None:
        self._release_positions()


def test_positions_are_whole_words() -> None:
    """The kernel reads the consumer position while we write it: it must be one aligned
    8-byte store, not struct's byte-at-a-time "<Q" (a half-written position looked up to
    16 MiB behind, and the kernel dropped records as if the ring were full)."""
    r = FakeRing()
    assert r._cons_pos.format == "Q" and r._cons_pos.itemsize == 8
    assert r._prod_pos.format == "Q" and r._prod_pos.itemsize == 8
    r.write(b"z" * 16)
    r.consume()
    assert struct.unpack_from("<Q", r._cons, 0)[0] == r.prod_pos == 24
    r.close()


def test_batches_and_limits() -> None:
    r = FakeRing()
    for i in range(10):
        r.write(bytes([i]) * (5 + i))
    assert r.consume(limit=4) == [bytes([i]) * (5 + i) for i in range(4)]
    assert r.consume() == [bytes([i]) * (5 + i) for i in range(4, 10)]
    assert r.consume() == [] and r.pending() == 0


def test_busy_stops_and_discard_skips() -> None:
    r = FakeRing()
    r.write(b"a" * 8)
    r.write(b"gone", DISCARD_BIT)
    r.write(b"b" * 8)
    r.write(b"c" * 8, BUSY_BIT)  # still being written by the kernel
    assert r.consume() == [b"a" * 8, b"b" * 8]
    assert r.pending() > 0


def test_record_wrapping_the_end_is_joined() -> None:
    r = FakeRing()
    r.write(b"x" * (SIZE - 64))
    assert r.consume() == [b"x" * (SIZE - 64)]
    payload = bytes(range(200))
    r.write(payload)  # header near the end, body wraps to the start
    assert r.consume() == [payload]


def test_module_constants() -> None:
    assert ringbuf.HDR_SIZE == 8
