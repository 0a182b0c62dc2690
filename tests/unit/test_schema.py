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
