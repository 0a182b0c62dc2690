"""agent/events/reader.py BatchQueue: bounded by records and by bytes, drops counted."""

from __future__ import annotations

from moray.agent.events.reader import RECORD_OVERHEAD, BatchQueue, batch_bytes


def test_batch_bytes_counts_records_and_their_overhead() -> None:
    assert batch_bytes([b"x" * 100, b"y" * 20]) == 120 + 2 * RECORD_OVERHEAD
    assert batch_bytes(()) == 0


def test_byte_bound_drops_and_counts_whole_batches() -> None:
    q = BatchQueue(max_records=1000, max_bytes=1000)
    big = [b"x" * 259] * 2                      # 600 bytes with the overhead
    assert q.put(big)
    assert q.bytes() == 600
    assert not q.put(big)                       # 1,200 > 1,000: dropped, counted
    assert q.dropped == 2
    assert q.put([b"z" * 59] * 4)               # 400: exactly at the bound
    assert q.bytes() == 1000
    assert q.get(0) == big
    assert q.bytes() == 400
    assert q.depth() == 4


def test_one_batch_larger_than_the_bound_passes_an_empty_queue() -> None:
    q = BatchQueue(max_records=1000, max_bytes=100)
    assert q.put([b"x" * 500])                  # else a long record could never pass
    assert not q.put([b"y"])
    assert q.get(0) == [b"x" * 500]
    assert q.put([b"y"])


def test_record_bound_still_holds() -> None:
    q = BatchQueue(max_records=3)
    assert q.put([b"a", b"b"])
    assert not q.put([b"c", b"d"])
    assert q.dropped == 2
    assert q.depth() == 2
