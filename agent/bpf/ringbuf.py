"""Consume a BPF ring buffer straight from its mmap'd pages, in batches.

No libbpf callback per record (a ctypes callback costs about a microsecond): the consumer
page is mapped read-write, the producer page and the data area read-only. `consume()`
copies out every committed record up to a limit and then publishes the new consumer
position with one store, which also tells the kernel it may wake us again.

The kernel offers the data area twice back to back so a record that wraps is contiguous;
libbpf maps both copies. We map it once and join the two pieces of the rare wrapping
record ourselves: every mapped page counts in the agent's RSS, and the second copy would
double what the ring buffer adds to it.

Layout (kernel/bpf/ringbuf.c): each record has an 8-byte header {u32 len | BUSY | DISCARD,
u32 page offset}; records are 8-byte aligned. A BUSY record is still being written: stop
there and come back later. DISCARDed records are skipped.
"""

from __future__ import annotations

import mmap
import select
import struct

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingBuffer:
    def __init__(self, map_fd: int, data_size: int) -> None:
        if data_size & (data_size - 1):
            raise ValueError("ring buffer size must be a power of two")
        page = mmap.PAGESIZE
        self._page = page
        self._mask = data_size - 1
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + data_size, mmap.MAP_SHARED,
                               mmap.PROT_READ, offset=page)
        self._view = memoryview(self._prod)
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)
        self.size = data_size

    def pending(self) -> int:
        """Bytes committed or in flight, not yet consumed."""
        return int(_U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0])

    def consume(self, limit: int = 4096) -> list[bytes]:
        """Copy out up to `limit` committed records (oldest first) and release their space."""
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]
        out: list[bytes] = []
        if cons >= prod:
            return out
        view, page, mask = self._view, self._page, self._mask
        end_of_data = page + mask + 1
        unpack = _U32.unpack_from
        append = out.append
        while cons < prod and len(out) < limit:
            off = page + (cons & mask)  # 8-byte aligned: a header never wraps
            hdr = unpack(view, off)[0]
            if hdr & BUSY_BIT:
                break
            length = hdr & ~(BUSY_BIT | DISCARD_BIT)
            if not hdr & DISCARD_BIT:
                start = off + HDR_SIZE
                if start >= end_of_data:
                    start -= mask + 1
                stop = start + length
                if stop <= end_of_data:
                    append(view[start:stop].tobytes())
                else:  # the record wraps around the end of the data area
                    append(view[start:end_of_data].tobytes()
                           + view[page:page + stop - end_of_data].tobytes())
            cons += (length + HDR_SIZE + 7) & ~7
        _U64.pack_into(self._cons, 0, cons)
        return out

    def wait(self, timeout: float) -> bool:
        """Block until the kernel signals new data or timeout (seconds) passes."""
        return bool(self._epoll.poll(timeout))

    def close(self) -> None:
        self._epoll.close()
        self._view.release()
        self._prod.close()
        self._cons.close()
