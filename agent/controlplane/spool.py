"""The agent's on-disk event spool: every event the agent accepts for the control plane is
written here first, and leaves only when the server has acknowledged it.

On disk (``<dir>``):
- ``seg-<16 digits>.spool``: append-only segments of records. A record is an 8-byte
  header (payload length, CRC-32 of the payload; both little-endian u32) followed by
  the msgpack encoding of a dict (``append``'s argument, returned as is by ``read``).
  Segments roll over at ``segment_bytes``.
- ``cursor``: ``<segment> <offset>`` of the first record not yet acknowledged, replaced
  atomically (write, fsync, rename) on every ``commit``.

State changes: ``append`` writes records and fsyncs before returning (so an accepted
event survives a crash); ``commit`` moves the cursor and deletes segments wholly before
it; ``open`` truncates a torn record at the end of the last segment (a crash mid-write)
and counts it. The spool is bounded by ``max_bytes`` of unacknowledged data: what does
not fit is refused, counted in ``dropped`` and logged (once per full period) — never
silently.

`SpoolWriter` runs ``append`` on a thread of its own for the agent's pipeline: the
pipeline hands a batch over (`submit`) and goes on; the records are encoded, written and
fsync'd there, in the order handed over. `close` writes every batch handed over before
it returns (the agent stops its pipeline, then the control-plane client, which closes
the writer, then the spool). A writer ``max_batches`` behind makes `submit` wait: the
back-pressure the fsync applied when it ran on the pipeline thread.

The agent's records (agent/controlplane/client.py ``ControlPlaneClient``) are
``{"id", "t", "type", "json"}``: the event's id, the time it was spooled (ms), its type
and ``json``, the bytes the server stores (the event's JSON as the pipeline encoded it
for the JSON sink, with ``"id"`` added). The spool never looks inside them. Until
2026-12 the record was ``{"id", "t", "type", "event": <the event as a dict>}``; a spool
written then is still read and sent (the sender encodes ``event`` to JSON).
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgpack

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
B = TypeVar("B")      # a batch as SpoolWriter's caller hands it over
_PREFIX, _SUFFIX = "seg-", ".spool"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolStats:
    records: int
    bytes: int
    dropped: int
    torn: int
    segments: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventSpool:
    """Bounded, crash-safe FIFO of event dicts. Thread-safe; one writer side (``append``)
    and one reader side (``read`` + ``commit``) may run in different threads."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 256 << 20,
                 segment_bytes: int = 4 << 20) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.dropped = 0
        self.torn = 0
        self._full = False
        self._lock = threading.Lock()
        self._data = threading.Condition(self._lock)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._cursor = self._load_cursor()
        self._sizes: dict[int, int] = {}     # segment -> bytes on disk
        self._pending = 0                    # records after the cursor
        self._recover()
        self._fh = open(self._seg_path(self._tail), "ab")  # noqa: SIM115 - kept open

    # -- files ---------------------------------------------------------------------------

    def _seg_path(self, segment: int) -> Path:
        return self.dir / f"{_PREFIX}{segment:016d}{_SUFFIX}"

    def _segments(self) -> list[int]:
        return sorted(int(p.name[len(_PREFIX):-len(_SUFFIX)])
                      for p in self.dir.glob(f"{_PREFIX}*{_SUFFIX}"))

    def _load_cursor(self) -> Position:
        try:
            seg, off = (self.dir / "cursor").read_text().split()
            return Position(int(seg), int(off))
        except FileNotFoundError:
            return Position(0, 0)
        except ValueError:
            log.error("spool cursor unreadable; replaying from the oldest segment",
                      extra={"dir": str(self.dir)})
            return Position(0, 0)

    def _save_cursor(self, pos: Position) -> None:
        tmp = self.dir / "cursor.tmp"
        with open(tmp, "w") as f:
            f.write(f"{pos.segment} {pos.offset}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "cursor")

    def _scan(self, segment: int, start: int = 0) -> tuple[int, int]:
        """(records, end of the last whole record) of a segment from ``start``."""
        data = self._seg_path(segment).read_bytes()
        off, count = start, 0
        while off + _HEADER.size <= len(data):
            size, crc = _HEADER.unpack_from(data, off)
            body = data[off + _HEADER.size: off + _HEADER.size + size]
            if len(body) < size or zlib.crc32(body) != crc:
                break
            off += _HEADER.size + size
            count += 1
        return count, off

    def _recover(self) -> None:
        segments = self._segments()
        if not segments:
            self._tail = max(self._cursor.segment, 1)
            self._cursor = Position(self._tail, 0)
            return
        if self._cursor.segment < segments[0]:
            self._cursor = Position(segments[0], 0)
        for seg in segments:
            if seg < self._cursor.segment:
                self._seg_path(seg).unlink()         # acknowledged, left by a crash
                continue
            count, end = self._scan(seg)
            size = self._seg_path(seg).stat().st_size
            if end < size:
                # A torn write at the end (crash mid-append): cut it off and count it.
                self.torn += 1
                log.warning("spool: truncated a torn record", extra={
                    "segment": seg, "at": end, "lost_bytes": size - end})
                with open(self._seg_path(seg), "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            self._sizes[seg] = end
            if seg == self._cursor.segment and self._cursor.offset:
                count = self._scan(seg, min(self._cursor.offset, end))[0]
            self._pending += count
        self._tail = segments[-1]

    # -- writing -------------------------------------------------------------------------

    def _unacked_bytes(self) -> int:
        return sum(self._sizes.values()) - (self._cursor.offset
                                            if self._cursor.segment in self._sizes else 0)

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Write ``records`` durably (one fsync per call). Returns how many were accepted;
        the rest did not fit under ``max_bytes`` and were counted in ``dropped``."""
        frames = []
        for rec in records:
            body = msgpack.packb(rec, use_bin_type=True, default=str)
            frames.append(_HEADER.pack(len(body), zlib.crc32(body)) + body)
        if not frames:
            return 0
        with self._lock:
            room = self.max_bytes - self._unacked_bytes()
            accepted: list[bytes] = []
            for frame in frames:
                if len(frame) > room:
                    break
                accepted.append(frame)
                room -= len(frame)
            refused = len(frames) - len(accepted)
            if refused:
                self.dropped += refused
                if not self._full:
                    log.error("event spool full: dropping events until the server catches up",
                              extra={"dir": str(self.dir), "max_bytes": self.max_bytes,
                                     "dropped_total": self.dropped})
                self._full = True
            elif self._full:
                log.warning("event spool has room again", extra={"dropped_total": self.dropped})
                self._full = False
            for frame in accepted:
                if self._sizes.get(self._tail, 0) >= self.segment_bytes:
                    self._roll()
                self._fh.write(frame)
                self._sizes[self._tail] = self._sizes.get(self._tail, 0) + len(frame)
            if accepted:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._pending += len(accepted)
                self._data.notify_all()
            return len(accepted)

    def _roll(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._tail += 1
        self._fh = open(self._seg_path(self._tail), "ab")  # noqa: SIM115
        self._sizes[self._tail] = 0
        _fsync_dir(self.dir)

    # -- reading -------------------------------------------------------------------------

    def wait(self, timeout: float) -> bool:
        """Block until unacknowledged records exist (True) or ``timeout`` passes."""
        with self._data:
            return self._data.wait_for(lambda: self._pending > 0, timeout)

    def read(self, max_records: int = 500, start: Position | None = None,
             max_bytes: int | None = None) -> tuple[list[dict[str, Any]], Position]:
        """Up to ``max_records`` records from ``start`` (default: the cursor), oldest first,
        and the position after the last one (pass it to ``commit`` once acknowledged).
        With ``max_bytes``, the records stop before their encoded sizes pass it (at least
        one record is read)."""
        with self._lock:
            pos = start or self._cursor
            segments = [s for s in sorted(self._sizes) if s >= pos.segment]
            out: list[dict[str, Any]] = []
            budget = max_bytes if max_bytes is not None else 1 << 62
            for seg in segments:
                off = pos.offset if seg == pos.segment else 0
                end = self._sizes[seg]
                if off >= end:
                    if seg != segments[-1]:
                        pos = Position(seg + 1, 0)
                    continue
                with open(self._seg_path(seg), "rb") as f:
                    f.seek(off)
                    data = f.read(end - off)
                i = 0
                while i < len(data) and len(out) < max_records:
                    size, _crc = _HEADER.unpack_from(data, i)
                    if out and size > budget:
                        max_records = len(out)      # full: stop here
                        break
                    budget -= size
                    out.append(msgpack.unpackb(data[i + _HEADER.size: i + _HEADER.size + size],
                                               raw=False))
                    i += _HEADER.size + size
                pos = Position(seg, off + i)
                if len(out) >= max_records:
                    break
            return out, pos

    def commit(self, pos: Position, count: int) -> None:
        """Acknowledge everything before ``pos`` (``count`` records); durable on return."""
        with self._lock:
            if pos <= self._cursor:
                return
            self._save_cursor(pos)
            self._cursor = pos
            self._pending = max(0, self._pending - count)
            for seg in [s for s in self._sizes if s < pos.segment]:
                self._seg_path(seg).unlink(missing_ok=True)
                del self._sizes[seg]

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(records=self._pending, bytes=self._unacked_bytes(),
                              dropped=self.dropped, torn=self.torn, segments=len(self._sizes))

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class SpoolWriter(Generic[B]):
    """Appends to an EventSpool off the caller's thread (see the module's docstring).
    ``prepare`` turns a batch into the spool's records (on the writer thread)."""

    def __init__(self, spool: EventSpool, prepare: Callable[[B], list[dict[str, Any]]],
                 max_batches: int = 8) -> None:
        self.spool = spool
        self.prepare = prepare
        self.errors = 0
        self._q: queue.Queue[B | None] = queue.Queue(max_batches)
        self._thread = threading.Thread(target=self._run, name="moray-spool", daemon=True)
        self._thread.start()

    def submit(self, batch: B) -> None:
        """Hand a batch over; it is written and fsync'd on the writer's thread."""
        if batch:
            self._q.put(batch)

    def _run(self) -> None:
        while (batch := self._q.get()) is not None:
            try:
                self.spool.append(self.prepare(batch))
            except (OSError, ValueError, TypeError) as err:  # disk error, unencodable
                self.errors += 1
                log.error("event spool: cannot write a batch: %s (%d batches so far)",
                          err, self.errors)

    def close(self, timeout: float = 30.0) -> None:
        """Write what was handed over, then stop the thread."""
        self._q.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("event spool: writer still busy after %.0fs at close", timeout)
