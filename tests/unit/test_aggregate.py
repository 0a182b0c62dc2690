"""Summaries of repeated opens (bpf/progs/agg.bpf.c): decoding the MR_OP_REPEAT record
around a recorded open, its JSON (`repeat`), the pipeline's counting and detection, the
queue's loss accounting of a dropped summary, and the sweeper's reclaim of exited tasks'
entries (agent/events/aggregate.py) over a fake map."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson
import pytest

from moray.agent.bpf import abi
from moray.agent.enrich.proctree import NS_PER_TICK, ProcessTree
from moray.agent.events.aggregate import Sweeper
from moray.agent.events.decode import DecodeError, decode, decode_open
from moray.agent.events.reader import BatchQueue
from moray.agent.events.types import OpenEvent
from moray.agent.output.schema import Clock, Formatter

REC = Path(__file__).resolve().parents[1] / "fixtures" / "records"


def summary(inner: bytes, count: int, first: int, last: int) -> bytes:
    size = abi.REPEAT.size + len(inner)
    return abi.REPEAT.compile().pack(abi.Op.REPEAT, size, 0, last + 5, count, first,
                                     last) + inner


def test_a_summary_decodes_to_the_repeated_open_with_its_count_and_span() -> None:
    inner = (REC / "open.bin").read_bytes()
    one = decode_open(inner)
    e = decode(summary(inner, 41, 1_000, 9_000))
    assert isinstance(e, OpenEvent)
    assert e.repeat == (41, 1_000, 9_000) and e.ts == 9_000
    assert e._replace(ts=one.ts, repeat=None) == one
    assert one.repeat is None


def test_a_summary_of_a_failed_open() -> None:
    e = decode(summary((REC / "open_failed.bin").read_bytes(), 3, 5, 6))
    assert isinstance(e, OpenEvent)
    assert e.path_as_written and e.ret == -2 and e.repeat == (3, 5, 6)


@pytest.mark.parametrize("cut", [0, 8, abi.REPEAT.size, abi.REPEAT.size + 20])
def test_a_short_summary_is_an_error(cut: int) -> None:
    rec = summary((REC / "open.bin").read_bytes(), 2, 1, 2)
    with pytest.raises((DecodeError, ValueError)):
        decode(rec[:cut])


def test_a_summary_of_something_else_than_an_open_is_an_error() -> None:
    with pytest.raises(DecodeError, match="summary of op 2"):
        decode(summary((REC / "fork.bin").read_bytes(), 2, 1, 2))


def test_the_json_of_a_summary_says_count_first_and_last() -> None:
    inner = (REC / "open.bin").read_bytes()
    e = decode(summary(inner, 7, 2_000_000_000, 3_000_000_000))
    assert isinstance(e, OpenEvent)
    clock = Clock()
    f = Formatter("node", clock)
    p = ProcessTree().ensure(e.proc)
    out = f.event(e, p, None, None)
    assert out["type"] == "open"
    assert out["repeat"] == {"count": 7, "first": clock.iso(2_000_000_000),
                             "last": clock.iso(3_000_000_000)}
    assert out["time"] == clock.iso(3_000_000_000)
    full = f.event(decode_open(inner), p, None, None)
    assert "repeat" not in full and full["file"] == out["file"]


def test_a_dropped_summary_counts_its_events_as_lost_opens() -> None:
    q = BatchQueue(max_records=1)
    inner = (REC / "open.bin").read_bytes()
    q.put([inner])
    q.put([summary(inner, 250, 1, 2), inner])  # dropped: the queue is full
    assert q.dropped_by_type == {"open": 251}


class FakeMap:
    def __init__(self, entries: dict[bytes, bytes]) -> None:
        self.entries = entries

    def keys(self) -> list[bytes]:
        return list(self.entries)

    def lookup(self, key: bytes) -> bytes | None:
        return self.entries.get(key)

    def delete(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None


class FakeObj:
    def __init__(self, m: FakeMap) -> None:
        self.m = m
        self.runs: list[bytes] = []

    def run(self, name: str, ctx: bytes = b"") -> int:
        assert name == "mr_agg_sweep"
        self.runs.append(ctx)
        return 2

    def map(self, name: str) -> FakeMap:  # type: ignore[override]
        assert name == "mr_agg"
        return self.m


def key(pid: int, tid: int, start_ns: int, path: bytes = b"/w/a") -> bytes:
    proc = abi.PROC.compile().pack(pid, tid, 1, 0, 0, 0, 0, 0, start_ns, 0, b"x")
    tail = abi.AGG_KEY.compile().size - len(proc)
    return (proc + bytes(16) + path).ljust(len(proc) + tail, b"\0")


def val(count: int) -> bytes:
    return abi.AGG_VAL.compile().pack(count, 1, 2, 3)


def test_the_sweeper_reclaims_only_exited_tasks_with_nothing_pending(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "10" / "task" / "10").mkdir(parents=True)
    # starttime (22nd field) 500 ticks
    (proc / "10" / "stat").write_text("10 (x y) S " + " ".join(["0"] * 18) + " 500 0\n")
    (proc / "20" / "task" / "21").mkdir(parents=True)
    (proc / "20" / "stat").write_text("20 (z) S " + " ".join(["0"] * 18) + " 700 0\n")
    alive = key(10, 10, 500 * NS_PER_TICK)
    gone = key(11, 11, 1)                          # no /proc/11
    gone_pending = key(12, 12, 1)                  # exited, summary not written yet
    reused = key(20, 21, 100 * NS_PER_TICK)        # pid 20 is another process now
    entries = {alive: val(0), gone: val(0), gone_pending: val(4), reused: val(0)}
    sweeper = Sweeper(FakeObj(FakeMap(entries)), str(proc))  # type: ignore[arg-type]
    assert sweeper.reclaim() == 2
    assert set(entries) == {alive, gone_pending}


def test_the_sweeper_runs_the_kernel_sweep_and_forces_it_at_stop() -> None:
    obj = FakeObj(FakeMap({}))
    sweeper = Sweeper(obj, interval=0.001, reclaim_every=3600)  # type: ignore[arg-type]
    stop = threading.Event()
    t = threading.Thread(target=sweeper.run, args=(stop,))
    t.start()
    while sweeper.sweeps < 3:
        stop.wait(0.001)
    stop.set()
    t.join(5)
    sweeper.stop()
    assert obj.runs[0] == bytes(8) and obj.runs[-1] == (1).to_bytes(4, "little") + bytes(4)
    assert sweeper.summaries == 2 * sweeper.sweeps


def test_agg_key_is_the_open_record_without_its_header() -> None:
    # the kernel copies mr_open's body (after the header) into the key: same layout
    assert abi.AGG_KEY.offsets["path"] == abi.OPEN.size - abi.HDR.size
    assert os.path.exists(REC / "open.bin")


@pytest.mark.parametrize("fast", [False, True])
def test_the_pipeline_routes_a_summary_counts_it_and_does_not_detect_on_it(
        tmp_path: Path, fast: bool) -> None:
    from tests.unit.test_fast_open import _run, make

    seen: list[dict[str, object]] = []

    def detect(out: dict[str, object], _p: object, _parent: object) -> list[object]:
        seen.append(out)
        return []

    first = make(b"/etc/shadow")
    batches = [[first, summary(first, 99, 10, 20), make(b"/etc/passwd")]]
    # with detection a plain function the compiled path is off (fast_open_ok): run it
    # without detection to have the summary among compiled opens
    data, stats, p = _run(tmp_path, batches, fast, detect=None if fast else detect)
    assert (p.open_lines is not None) == fast
    lines = [orjson.loads(x) for x in data.splitlines()]
    assert [x.get("repeat", {}).get("count") for x in lines] == [None, 99, None]
    assert lines[1]["file"] == lines[0]["file"] and lines[1]["process"] == lines[0]["process"]
    assert stats.events["open"] == 3 and stats.aggregated["open"] == 99
    if not fast:
        assert [s["file"]["path"] for s in seen] == ["/etc/shadow", "/etc/passwd"]  # type: ignore[index]
