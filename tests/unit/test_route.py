"""Router: the pipeline's one exit for events and alerts (agent/pipeline/route.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from moray.agent.output.jsonl import JsonLines
from moray.agent.pipeline.route import Router


class Spool:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.lines: list[bytes] = []

    def submit(self, events: list[Any], lines: bytearray) -> None:
        assert lines.count(b"\n") == len(events)     # one line per event
        self.batches.append(events)
        self.lines.append(bytes(lines))


class FakeSink:
    """A sink with `write` only (no `write_encoded`)."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def write(self, event: dict[str, Any]) -> None:
        self.got.append(event)

    def flush(self) -> None: ...
    def close(self) -> None: ...


class Output:
    kind = "webhook"
    sent = 0
    dropped = 0

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, Any], bytes | None]] = []

    def publish(self, alert: dict[str, Any], encoded: bytes | None = None) -> None:
        self.got.append((alert, encoded))

    def close(self, timeout: float = 2.0) -> None: ...


ALERT = {"type": "alert", "rule": "r", "event": {"type": "open", "n": 1}}


def test_events_and_alerts_leave_by_one_exit(tmp_path: Path) -> None:
    sink = JsonLines(str(tmp_path / "out.jsonl"))
    spool, siem = Spool(), Output()
    r = Router(sink, [siem], spool, batch=2)
    r.event({"type": "open", "n": 1})
    r.event({"type": "open", "n": 2})             # a full batch is handed to the spool
    assert [len(b) for b in spool.batches] == [2]
    r.event({"type": "open", "n": 3})
    r.alerts([ALERT])                             # alerts are wanted now: flushed
    assert [e["n"] if e["type"] == "open" else e["type"] for e in spool.batches[1]] == [
        3, "alert"]
    assert siem.got == [(ALERT, orjson.dumps(ALERT))]   # one encoding, shared
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x) for x in lines] == [
        {"type": "open", "n": 1}, {"type": "open", "n": 2}, {"type": "open", "n": 3}, ALERT]
    assert lines[-1] == siem.got[0][1]
    # encoded once: the spool got the very lines the sink wrote
    assert b"".join(spool.lines) == (tmp_path / "out.jsonl").read_bytes()
    r.close()


def test_flush_hands_a_partial_batch_over(tmp_path: Path) -> None:
    spool = Spool()
    r = Router(JsonLines(str(tmp_path / "out.jsonl")), (), spool, batch=10)
    for i in range(3):
        r.event({"type": "open", "n": i})
    assert spool.batches == []
    r.flush()
    assert [[e["n"] for e in b] for b in spool.batches] == [[0, 1, 2]]
    r.close()


def test_a_sink_without_write_encoded_gets_dicts_and_the_spool_still_gets_lines() -> None:
    sink, spool = FakeSink(), Spool()
    r = Router(sink, (), spool, batch=10)
    r.event({"type": "open", "n": 1})
    r.alerts([ALERT])
    assert sink.got == [{"type": "open", "n": 1}, ALERT]
    assert spool.lines == [orjson.dumps({"type": "open", "n": 1}) + b"\n" +
                           orjson.dumps(ALERT) + b"\n"]


def test_without_spool_events_go_straight_to_the_sink(tmp_path: Path) -> None:
    sink = JsonLines(str(tmp_path / "out.jsonl"))
    assert Router(sink).event == sink.write
