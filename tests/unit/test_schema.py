"""The JSON event shape (docs/events.md) built from decoded records."""

from __future__ import annotations

import json
import os
from pathlib import Path

from moray.agent.enrich.proctree import ProcessTree
from moray.agent.events.decode import decode
from moray.agent.output.schema import Formatter, access_of, flag_names

REC = Path(__file__).resolve().parents[1] / "fixtures" / "records"


def build(name: str) -> dict[str, object]:
    ev = decode((REC / f"{name}.bin").read_bytes())
    tree = ProcessTree("/nonexistent", read_proc=lambda proc, pid: None)
    p = tree.ensure(ev.proc)  # type: ignore[union-attr]
    out = Formatter("node-1").event(ev, p, None, None)  # type: ignore[arg-type]
    json.dumps(out)
    return out


def test_common_fields() -> None:
    e = build("open")
    assert set(e) >= {"type", "time", "node", "process", "parent", "container", "file"}
    assert e["node"] == "node-1" and e["container"] is None
    proc = e["process"]
    assert isinstance(proc, dict)
    assert set(proc) >= {"pid", "exec_id", "binary", "args", "cwd", "uid", "euid", "gid",
                         "start_time"}
    assert str(e["time"]).endswith("Z") and str(proc["start_time"]) < str(e["time"])


def test_open_fields() -> None:
    f = build("open_failed")["file"]
    assert f == {"path": "/etc/moray-missing", "flags": ["O_RDONLY", "O_CLOEXEC"],
                 "access": "read", "result": -2, "error": "ENOENT", "fd": None,
                 "path_as_written": True, "truncated": False, "root": None}


def test_network_and_exit_fields() -> None:
    n = build("connect")["network"]
    assert isinstance(n, dict)
    assert n["family"] == "ipv4" and n["protocol"] == "tcp" and n["daddr"] == "127.0.0.1"
    x = build("exit")["exit"]
    assert x == {"status": 3 << 8, "code": 3, "signal": None}


def test_flags() -> None:
    assert access_of(os.O_WRONLY | os.O_CREAT) == "write"
    assert access_of(os.O_RDWR) == "read-write"
    assert flag_names(os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == ["O_WRONLY", "O_CREAT", "O_TRUNC"]


def test_clock_iso_picks_up_a_new_offset_within_check_every_calls() -> None:
    """A wall-clock step (NTP) shows in event times once the resync is due: iso() looks
    at the monotonic clock every CHECK_EVERY calls, not on every event."""
    import time

    from moray.agent.output.schema import Clock

    c = Clock(resync=0.0)
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    first = c.iso(boot)
    c._offset -= 3600 * 10**9          # as if the offset were an hour off
    hours = {c.iso(boot)[:13] for _ in range(Clock.CHECK_EVERY + 2)}
    assert len(hours) == 2              # an hour off, then re-read within CHECK_EVERY + 1
    assert c.iso(boot)[:13] == first[:13]
