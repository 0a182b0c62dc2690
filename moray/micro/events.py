"""The MicroEnforcer's events, in the agent's JSON schema (docs/events.md), one per line.

Built from ``/proc/<pid>`` of the caller at the time of the decision (the supervisor has
no kernel records): ``process`` as the agent writes it (exec_id ``<pid>:<start ticks>``,
binary from ``/proc/<pid>/exe``), ``parent`` ``{pid, exec_id, binary}``, ``container``
null (the enforcer runs inside the container and does not know its runtime id; the
``node`` is the container's host name), and ``"enforcer": "micro"`` beside ``type``.

Could be shared with moray.nano (same shape, another source of process facts): the
``Sink`` (a JSON-lines writer to a stream or file, flushed per event) and ``envelope``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import IO, Any

import orjson

ENFORCER = "micro"
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _iso(ns: int) -> str:
    s, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(s)) + f"{frac:09d}Z"


def _boot_wall_ns() -> int:
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _stat_fields(pid: int, proc: str) -> tuple[int, int] | None:
    """(ppid, start ticks) of /proc/<pid>/stat."""
    try:
        raw = open(f"{proc}/{pid}/stat", "rb").read()  # noqa: SIM115
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2:].split()
    return int(rest[1]), int(rest[19])


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def process(pid: int, tid: int, proc: str = "/proc") -> dict[str, Any]:
    """The ``process`` object of pid (thread-group) / tid, read now from /proc."""
    out: dict[str, Any] = {"pid": pid, "tid": tid, "exec_id": None, "binary": None,
                           "args": [], "cwd": None, "comm": None, "uid": None,
                           "euid": None, "gid": None, "start_time": None}
    st = _stat_fields(pid, proc)
    if st is not None:
        out["exec_id"] = f"{pid}:{st[1]}"
        out["start_time"] = _iso(_boot_wall_ns() + st[1] * _TICK_NS)
    out["binary"] = _readlink(f"{proc}/{pid}/exe")
    out["cwd"] = _readlink(f"{proc}/{tid}/cwd")
    try:
        raw = open(f"{proc}/{pid}/cmdline", "rb").read(4096)  # noqa: SIM115
        out["args"] = [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]
        out["comm"] = open(f"{proc}/{tid}/comm").read().strip()  # noqa: SIM115
        for line in open(f"{proc}/{tid}/status"):  # noqa: SIM115
            if line.startswith("Uid:"):
                f = line.split()
                out["uid"], out["euid"] = int(f[1]), int(f[2])
            elif line.startswith("Gid:"):
                out["gid"] = int(line.split()[1])
    except OSError:
        pass  # the process went away: what was read stays
    return out


def parent(pid: int, proc: str = "/proc") -> dict[str, Any] | None:
    st = _stat_fields(pid, proc)
    if st is None or st[0] == 0:
        return None
    pst = _stat_fields(st[0], proc)
    return {"pid": st[0], "exec_id": f"{st[0]}:{pst[1]}" if pst else None,
            "binary": _readlink(f"{proc}/{st[0]}/exe")}


def envelope(kind: str, node: str, proc_obj: dict[str, Any] | None,
             parent_obj: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": kind, "enforcer": ENFORCER, "time": _iso(time.time_ns()),
            "node": node, "process": proc_obj, "parent": parent_obj, "container": None}


class Sink:
    """JSON lines to stdout, stderr or a file (appended), one write and flush per event
    (a line is whole even when the workload shares the stream)."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self._own = dest not in ("-", "stdout", "stderr")
        if dest in ("-", "stdout"):
            self._f: IO[bytes] = sys.stdout.buffer
        elif dest == "stderr":
            self._f = sys.stderr.buffer
        else:
            self._f = open(dest, "ab", buffering=0)  # noqa: SIM115
        self.written = 0

    def write(self, event: dict[str, Any]) -> None:
        self._f.write(orjson.dumps(event) + b"\n")
        self._f.flush()
        self.written += 1

    def close(self) -> None:
        if self._own:
            self._f.close()


def node_name() -> str:
    return socket.gethostname()
