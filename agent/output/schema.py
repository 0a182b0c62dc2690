"""The agent's JSON event: one object per line, the stable shape documented in
docs/events.md. This module is the only place that shape is built.

    {"type", "time", "node", "process": {...}, "parent": {...} | null,
     "container": {...} | null, <the type's own object: exec | exit | file | network>}

An open event with `repeat` ({"count", "first", "last"}) stands for `count` more opens
identical to it but for their time, counted in the kernel (bpf/progs/agg.bpf.c).

Nested objects are shared between events (a process's `process` object across its burst
of events, a tree entry's `parent` object, one path's `file` object): sinks, detection
and outputs read them and never change them in place; code that must change one copies
it first (exec's `filename`, agent/pipeline/format.py `new_image`).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any

from moray.agent.enrich.proctree import NS_PER_TICK, Process
from moray.agent.events.types import (
    EnforceEvent,
    EventType,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    KernelEvent,
    NetEvent,
    OpenEvent,
    SyscallEvent,
)
from moray.agent.output.syscalls_json import syscall_json

SCHEMA_VERSION = 1

_O_ACCMODE = os.O_ACCMODE
_OPEN_FLAGS = (("O_CREAT", os.O_CREAT), ("O_EXCL", os.O_EXCL), ("O_TRUNC", os.O_TRUNC),
               ("O_APPEND", os.O_APPEND), ("O_NONBLOCK", os.O_NONBLOCK),
               ("O_DIRECTORY", os.O_DIRECTORY), ("O_NOFOLLOW", os.O_NOFOLLOW),
               ("O_CLOEXEC", os.O_CLOEXEC), ("O_PATH", 0o10000000), ("O_TMPFILE", 0o20200000))
_PROTO = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", 0: "ip",
          socket.IPPROTO_ICMP: "icmp", 58: "icmpv6"}
_FAMILY: dict[int, str] = {int(socket.AF_INET): "ipv4", int(socket.AF_INET6): "ipv6"}


class Clock:
    """Kernel boot-clock ns -> wall time. The offset is re-read every `resync` seconds so
    NTP steps show up; CLOCK_BOOTTIME keeps counting across suspend, like the kernel's.
    `iso` (once per event) looks at the monotonic clock every `CHECK_EVERY` calls only."""

    CHECK_EVERY = 256

    def __init__(self, resync: float = 60.0) -> None:
        self.resync = resync
        self._next = 0.0
        self._offset = 0
        self._last_s = -1
        self._last_prefix = ""
        self._calls = 0
        self._sync()

    def _sync(self) -> None:
        self._offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self._next = time.monotonic() + self.resync

    def wall_ns(self, boot_ns: int) -> int:
        if time.monotonic() >= self._next:
            self._sync()
        return boot_ns + self._offset

    def iso(self, boot_ns: int) -> str:
        self._calls -= 1
        if self._calls < 0:
            self._calls = self.CHECK_EVERY
            if time.monotonic() >= self._next:
                self._sync()
        s, frac = divmod(boot_ns + self._offset, 1_000_000_000)
        if s != self._last_s:  # events come in bursts within one second: format it once
            self._last_s = s
            self._last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(s))
        return f"{self._last_prefix}{frac:09d}Z"


def access_of(flags: int) -> str:
    mode = flags & _O_ACCMODE
    if flags & 0o10000000:
        return "path"
    return {os.O_RDONLY: "read", os.O_WRONLY: "write", os.O_RDWR: "read-write"}.get(mode, "?")


def flag_names(flags: int) -> list[str]:
    mode = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}.get(
        flags & _O_ACCMODE, "O_ACCMODE?")
    return [mode] + [n for n, v in _OPEN_FLAGS if flags & v == v]


def _err(ret: int) -> str | None:
    return errno.errorcode.get(-ret, str(-ret)) if ret < 0 else None


class Formatter:
    def __init__(self, node: str, clock: Clock | None = None) -> None:
        self.node = node
        self.clock = clock or Clock()
        self._boot_wall_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self._files: dict[tuple[Any, ...], dict[str, Any]] = {}
        # open flags -> (their names, the access): a host uses a few dozen flag values,
        # and a flood of distinct paths would otherwise name the same flags again each time
        self._flags: dict[int, tuple[list[str], str]] = {}

    def process(self, e: KernelEvent, p: Process) -> dict[str, Any]:
        """The `process` object: what changes only on exec is built once per exec and
        cached on the tree entry; per-event fields (thread, credentials) are added.

        The whole object is cached too, for the kernel's last task view of this entry:
        a burst of events from one thread shares one dict (read-only; the caller copies
        it before changing it)."""
        k = e.proc
        if p.event_version == p.version and p.event_key == k:
            return p.event_json  # type: ignore[return-value]
        base = p.json_cache
        if base is None or p.json_version != p.version:
            base = {"exec_id": p.exec_id, "binary": p.binary, "args": list(p.args),
                    "cwd": p.cwd,
                    "start_time": self.clock.iso(p.start_ticks * NS_PER_TICK)}
            p.json_cache, p.json_version = base, p.version
        out = {"pid": k.pid, "tid": k.tid, **base, "comm": k.comm, "uid": k.uid,
               "euid": k.euid, "gid": k.gid, "cgroup_id": k.cgroup_id, "mntns": k.mntns}
        p.event_key, p.event_json, p.event_version = k, out, p.version
        return out

    def _file(self, e: OpenEvent) -> dict[str, Any]:
        """The `file` object, shared by the events of one path, flags and result
        (read-only): a program opening the same file again and again costs one lookup."""
        key = (e.path, e.flags, e.ret, e.path_as_written, e.truncated, e.private_root)
        got = self._files.get(key)
        if got is None:
            if len(self._files) >= 4096:
                self._files.clear()
            named = self._flags.get(e.flags)
            if named is None:
                if len(self._flags) >= 1024:
                    self._flags.clear()
                named = self._flags[e.flags] = (flag_names(e.flags), access_of(e.flags))
            got = self._files[key] = {
                "path": e.path, "flags": named[0], "access": named[1],
                "result": e.ret if e.ret < 0 else 0, "error": _err(e.ret),
                "fd": e.ret if e.ret >= 0 else None,
                "path_as_written": e.path_as_written, "truncated": e.truncated,
                # the root the path is relative to: a failed open's path is as written
                "root": None if e.path_as_written else (
                    "private" if e.private_root else "host")}
        return got

    def event(self, e: KernelEvent, p: Process, parent: Process | None,
              container: dict[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": str(e.type), "time": self.clock.iso(e.ts), "node": self.node,
            "process": self.process(e, p),
            "parent": parent.to_json() if parent is not None else (
                {"pid": e.proc.ppid, "exec_id": p.parent_exec_id, "binary": None}
                if e.proc.ppid else None),
            "container": container,
        }
        if isinstance(e, OpenEvent):  # the most frequent: tested first
            out["file"] = self._file(e)
            if e.repeat is not None:  # a summary of identical opens (bpf/progs/agg.bpf.c)
                n, first, last = e.repeat
                out["repeat"] = {"count": n, "first": self.clock.iso(first),
                                 "last": self.clock.iso(last)}
        elif isinstance(e, ExecEvent):
            out["process"] = {**out["process"], "filename": e.filename}  # the cached one: copy
            out["exec"] = {"argc": e.argc, "args_truncated": e.args_truncated,
                           "binary_truncated": e.binary_truncated}
        elif isinstance(e, ExitEvent):
            out["exit"] = {"status": e.status, "code": e.exit_code, "signal": e.signal}
        elif isinstance(e, NetEvent):
            out["network"] = {
                "family": _FAMILY.get(e.family, str(e.family)),
                "protocol": _PROTO.get(e.protocol, str(e.protocol)),
                "saddr": e.saddr, "sport": e.sport or None,
                "daddr": e.daddr, "dport": e.dport or None,
            }
        elif isinstance(e, EnforceEvent):
            # the raw decision; the pipeline's format stage replaces it with the
            # explanation (agent/policy/explain.py) when the agent enforces policies
            out["enforcement"] = {"action": e.action, "kind": e.kind,
                                  "policies": f"{e.policies:#x}", "enforced": f"{e.enforced:#x}",
                                  "path": e.path or None, "daddr": e.daddr, "arg": e.arg}
        elif isinstance(e, SyscallEvent):
            out["syscall"] = syscall_json(e)
        elif isinstance(e, ForkEvent):
            pass
        return out


__all__ = ["SCHEMA_VERSION", "Clock", "EventType", "Formatter", "access_of", "flag_names"]
