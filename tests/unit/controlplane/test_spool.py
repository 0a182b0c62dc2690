from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from moray.agent.controlplane.spool import EventSpool


def _events(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"id": f"e{i}", "type": "exec", "n": i, "blob": b"\x00\x01"}
            for i in range(start, start + n)]


def test_fifo_commit_and_reopen(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path, segment_bytes=200)
    assert spool.append(_events(20)) == 20
    got, pos = spool.read(max_records=7)
    assert [e["n"] for e in got] == list(range(7))
    assert got[0]["blob"] == b"\x00\x01"
    spool.commit(pos, len(got))
    assert spool.stats().records == 13
    spool.close()
    again = EventSpool(tmp_path, segment_bytes=200)     # a restart: replay from the cursor
    assert again.stats().records == 13
    got, pos = again.read(max_records=100)
    assert [e["n"] for e in got] == list(range(7, 20))
    again.commit(pos, len(got))
    assert again.stats().records == 0
    assert again.stats().segments <= 2                  # acknowledged segments are deleted
    assert again.read()[0] == []
    again.append(_events(1, 20))
    assert [e["n"] for e in again.read()[0]] == [20]


def test_uncommitted_read_is_replayed(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path)
    spool.append(_events(5))
    first, _ = spool.read()
    spool.close()
    assert EventSpool(tmp_path).read()[0] == first


def test_full_spool_drops_and_counts(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path, max_bytes=1000)
    accepted = spool.append(_events(100))
    assert 0 < accepted < 100
    assert spool.dropped == 100 - accepted
    assert spool.stats().bytes <= 1000
    got, pos = spool.read(max_records=1000)
    assert [e["n"] for e in got] == list(range(accepted))   # the oldest are kept, in order
    spool.commit(pos, len(got))
    assert spool.append(_events(1, 500)) == 1


def test_torn_tail_is_truncated_and_counted(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path)
    spool.append(_events(3))
    spool.close()
    seg = sorted(tmp_path.glob("seg-*"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x12\x34")   # half a header: a crash mid-append
    again = EventSpool(tmp_path)
    assert again.torn == 1
    assert [e["n"] for e in again.read()[0]] == [0, 1, 2]
    again.append(_events(1, 3))
    assert [e["n"] for e in again.read()[0]] == [0, 1, 2, 3]


def test_corrupt_record_stops_the_scan(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path)
    spool.append(_events(3))
    spool.close()
    seg = sorted(tmp_path.glob("seg-*"))[-1]
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0xFF                             # flip a byte inside the last record
    seg.write_bytes(bytes(data))
    again = EventSpool(tmp_path)
    assert [e["n"] for e in again.read()[0]] == [0, 1]
    assert again.torn == 1


def test_segments_are_bounded(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path, segment_bytes=300)
    spool.append(_events(50))
    sizes = [os.path.getsize(p) for p in tmp_path.glob("seg-*")]
    assert len(sizes) > 3 and max(sizes) < 300 + 100
    got, _pos = spool.read(max_records=1000)
    assert [e["n"] for e in got] == list(range(50))


def test_writer_appends_off_the_callers_thread_and_loses_nothing_at_close(
        tmp_path: Path) -> None:
    """SpoolWriter: batches handed over are written (fsync'd) on the writer's thread, in
    order; close() writes every batch handed over before it returns."""
    import threading

    from moray.agent.controlplane.spool import SpoolWriter

    spool = EventSpool(tmp_path, segment_bytes=300)
    threads: set[str] = set()

    def prepare(batch: list[Any]) -> list[dict[str, Any]]:
        threads.add(threading.current_thread().name)
        return list(batch)

    w = SpoolWriter(spool, prepare, max_batches=2)
    for i in range(0, 50, 5):
        w.submit(_events(5, i))
    w.close()
    assert threads == {"moray-spool"}
    got, _ = spool.read(max_records=100)
    assert [e["n"] for e in got] == list(range(50))
    spool.close()
    assert [e["n"] for e in EventSpool(tmp_path).read(max_records=100)[0]] == list(range(50))
