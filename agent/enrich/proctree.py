"""The process tree: every live process on the host, keyed by exec id.

An exec id is "<pid>:<start>", start being the process's start time in clock ticks since
boot, exactly as /proc/<pid>/stat field 22 shows it (the kernel sends start_boottime in ns;
ns // (1e9 / CLK_TCK) is the same number). Two processes never share one, even when a pid
is reused, and the processes read from /proc at start-up get the same ids the kernel's
events carry later.

What changes the tree, and when:
  start-up  `scan_proc()` reads every process in /proc (psutil): binary, args, cwd, parent.
  fork      a child entry, copying the parent's binary/args/cwd (it runs the parent's image).
  exec      the entry's binary, args and cwd replaced (same process, same exec id).
  exit      the entry moves to a bounded "recently exited" LRU, so events still in flight
            (a child's exit after its parent's, a late open) keep their ancestry; the LRU's
            oldest entries are freed. Memory is bounded by live processes + that LRU.
  miss      an event for a process we never saw (started while a ring buffer was full):
            read /proc/<pid> if its start time matches, else an entry from the event itself.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil

from moray.agent.events.types import ExecEvent, Proc

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLK_TCK


def ticks(start_ns: int) -> int:
    return start_ns // NS_PER_TICK


def exec_id(pid: int, start_ticks: int) -> str:
    return f"{pid}:{start_ticks}"


@dataclass(slots=True)
class Process:
    exec_id: str
    pid: int
    start_ticks: int
    ppid: int
    parent_exec_id: str | None
    binary: str
    args: tuple[str, ...]
    cwd: str
    uid: int
    euid: int
    gid: int
    cgroup_id: int
    comm: str
    exited: bool = False
    version: int = 0  # bumped on exec: cached JSON of this entry is stale
    # JSON caches (agent/output/schema.py), valid while json_version == version
    json_cache: dict[str, Any] | None = None
    json_version: int = -1
    event_key: tuple[Any, ...] | None = None  # the kernel's task view the next one is for
    event_json: dict[str, Any] | None = None  # `process` object, shared by events: read-only
    event_version: int = -1
    ref_json: dict[str, Any] | None = None  # to_json(), as other events' `parent`
    ref_version: int = -1

    def to_json(self) -> dict[str, Any]:
        """This process as another event's `parent` (cached per exec: do not modify)."""
        if self.ref_version != self.version or self.ref_json is None:
            self.ref_json = {"pid": self.pid, "exec_id": self.exec_id, "binary": self.binary}
            self.ref_version = self.version
        return self.ref_json


def stat_start_ticks(proc: str, pid: int) -> int | None:
    """Start time of <proc>/<pid> in clock ticks (stat field 22), None if it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: fields restart after the last ')'
    rest = data[data.rfind(b")") + 2:].split()
    try:
        return int(rest[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


class ProcessTree:
    def __init__(self, proc: str = "/proc", exited_keep: int = 8192,
                 max_live: int = 1 << 20,
                 read_proc: Callable[[str, int], Process | None] | None = None) -> None:
        self.proc = proc
        self.live: dict[str, Process] = {}
        self.exited: OrderedDict[str, Process] = OrderedDict()
        self.exited_keep = exited_keep
        self.max_live = max_live
        self._read_proc = read_proc or self._read_proc_default
        self.proc_reads = 0
        self.misses = 0
        self.gen = 0  # bumped whenever an entry is added, exits or is reaped

    def __len__(self) -> int:
        return len(self.live) + len(self.exited)

    def __iter__(self) -> Iterator[Process]:
        return iter(list(self.live.values()))

    def get(self, eid: str) -> Process | None:
        p = self.live.get(eid)
        if p is None:
            p = self.exited.get(eid)
        return p

    # --- start-up ---------------------------------------------------------------------

    def scan_proc(self) -> int:
        """Read every process that exists now; returns how many were added."""
        n = 0
        pids = []
        try:
            pids = [int(d) for d in os.listdir(self.proc) if d.isdigit()]
        except OSError as err:
            log.error("cannot list %s: %s", self.proc, err.strerror)
        for pid in pids:
            p = self._read_proc(self.proc, pid)
            if p is not None and p.exec_id not in self.live:
                self.live[p.exec_id] = p
                n += 1
        # parents' exec ids, now that all are known
        by_pid = {p.pid: p for p in self.live.values()}
        for p in self.live.values():
            parent = by_pid.get(p.ppid)
            if parent is not None:
                p.parent_exec_id = parent.exec_id
        return n

    @staticmethod
    def _read_proc_default(proc: str, pid: int) -> Process | None:
        st = stat_start_ticks(proc, pid)
        if st is None:
            return None
        try:
            ps = psutil.Process(pid)
            with ps.oneshot():
                ppid = ps.ppid()
                uids = ps.uids()
                gids = ps.gids()
                comm = ps.name()
                try:
                    binary = ps.exe()
                except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                    binary = ""
                try:
                    args = tuple(ps.cmdline())
                except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                    args = ()
                try:
                    cwd = ps.cwd()
                except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                    cwd = ""
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        # cgroup id 0: events carry the kernel's own cgroup id for every process
        return Process(exec_id(pid, st), pid, st, ppid, None, binary or f"[{comm}]", args,
                       cwd, uids.real, uids.effective, gids.real, 0, comm)

    # --- events -----------------------------------------------------------------------

    def ensure(self, p: Proc) -> Process:
        """The entry for the process an event is about, created if we never saw it."""
        eid = exec_id(p.pid, ticks(p.start_ns))
        cur = self.live.get(eid) or self.exited.get(eid)
        if cur is not None:
            return cur
        self.misses += 1
        entry = None
        st = stat_start_ticks(self.proc, p.pid)
        if st == ticks(p.start_ns):
            self.proc_reads += 1
            entry = self._read_proc(self.proc, p.pid)
        if entry is None:
            entry = Process(eid, p.pid, ticks(p.start_ns), p.ppid, None, f"[{p.comm}]", (), "",
                            p.uid, p.euid, p.gid, p.cgroup_id, p.comm)
        entry.parent_exec_id = exec_id(p.ppid, ticks(p.pstart_ns)) if p.ppid else None
        self._add(entry)
        return entry

    def parent_of(self, p: Proc) -> Process | None:
        if not p.ppid:
            return None
        return self.get(exec_id(p.ppid, ticks(p.pstart_ns)))

    def on_fork(self, child: Proc) -> Process:
        eid = exec_id(child.pid, ticks(child.start_ns))
        parent = self.parent_of(child)
        entry = Process(eid, child.pid, ticks(child.start_ns), child.ppid,
                        parent.exec_id if parent else exec_id(child.ppid, ticks(child.pstart_ns)),
                        parent.binary if parent else f"[{child.comm}]",
                        parent.args if parent else (), parent.cwd if parent else "",
                        child.uid, child.euid, child.gid, child.cgroup_id, child.comm)
        self._add(entry)
        return entry

    def on_exec(self, ev: ExecEvent) -> Process:
        p = ev.proc
        eid = exec_id(p.pid, ticks(p.start_ns))
        entry = self.live.get(eid)
        if entry is None:
            entry = Process(eid, p.pid, ticks(p.start_ns), p.ppid, None, "", (), "", p.uid,
                            p.euid, p.gid, p.cgroup_id, p.comm)
            self._add(entry)
        entry.version += 1
        entry.binary = ev.binary
        entry.args = ev.args
        entry.cwd = ev.cwd
        entry.ppid = p.ppid
        entry.parent_exec_id = exec_id(p.ppid, ticks(p.pstart_ns)) if p.ppid else None
        entry.uid, entry.euid, entry.gid = p.uid, p.euid, p.gid
        entry.cgroup_id = p.cgroup_id
        entry.comm = p.comm
        return entry

    def on_exit(self, p: Proc) -> Process | None:
        eid = exec_id(p.pid, ticks(p.start_ns))
        entry = self.live.pop(eid, None)
        if entry is None:
            return self.exited.get(eid)
        self.gen += 1
        entry.exited = True
        entry.event_key = entry.event_json = None  # few events follow an exit: free it
        self.exited[eid] = entry
        while len(self.exited) > self.exited_keep:
            self.exited.popitem(last=False)
        return entry

    def _add(self, entry: Process) -> None:
        self.gen += 1
        self.live[entry.exec_id] = entry
        if len(self.live) > self.max_live:
            # a lost exit (ring buffer overflow) would otherwise leak: drop dead entries
            self.reap()

    def reap(self) -> int:
        """Remove live entries whose process no longer exists (lost exit events)."""
        gone = [e for e, p in self.live.items()
                if stat_start_ticks(self.proc, p.pid) != p.start_ticks]
        self.gen += 1
        for e in gone:
            p = self.live.pop(e)
            p.exited = True
            self.exited[e] = p
        while len(self.exited) > self.exited_keep:
            self.exited.popitem(last=False)
        return len(gone)

