"""Raw ring-buffer records -> typed events: DECODERS[opcode](record).

Every decoder takes the record's bytes (header included), trusts only the fixed part's
layout from agent/bpf/abi.py and checks string lengths against the record size, so a
short or corrupt record raises DecodeError (counted by the caller) instead of producing a
wrong event.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from moray.agent.bpf import abi
from moray.agent.bpf.abi import EKind, Op
from moray.agent.events.types import (
    AnyEvent,
    CgroupEvent,
    EnforceEvent,
    EventType,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    NetEvent,
    OpenEvent,
    Proc,
    SyscallEvent,
)
from moray.errors import KernelError

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6


class DecodeError(KernelError, ValueError):
    def __init__(self, op: int, reason: str) -> None:
        self.op = op
        super().__init__(f"record op={op}: {reason}")


def _s(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


_COMMS: dict[bytes, str] = {}  # raw 16-byte comm -> name: a host has few distinct ones
_new_tuple = tuple.__new__


def _comm(raw: bytes) -> str:
    name = _COMMS.get(raw)
    if name is None:
        if len(_COMMS) >= 4096:
            _COMMS.clear()
        name = _COMMS[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return name


def _proc(t: tuple[object, ...], i: int) -> Proc:
    """Proc from a flat unpack() tuple whose mr_proc fields start at index i."""
    comm = t[i + 10]
    assert isinstance(comm, bytes)
    # tuple.__new__ directly: NamedTuple's own __new__ is a Python-level call (hot path)
    p: Proc = _new_tuple(Proc, (*t[i:i + 10], _comm(comm)))
    return p


_OP = struct.Struct("<H")
_PROC_AT = abi.EXEC.index["proc.pid"]  # same in every event with a proc
_EXEC = abi.EXEC.compile()
_FORK = abi.FORK.compile()
_EXIT = abi.EXIT.compile()
_OPEN = abi.OPEN.compile()
_NET = abi.NET.compile()
_CGROUP = abi.CGROUP.compile()
_HDR = abi.HDR.compile()
_ENFORCE = abi.ENFORCE.compile()
_SYSOBS = abi.SYSOBS.compile()


def _need(rec: bytes, size: int, op: int) -> None:
    if len(rec) < size:
        raise DecodeError(op, f"{len(rec)} bytes, need {size}")


def decode_exec(rec: bytes) -> ExecEvent:
    _need(rec, _EXEC.size, Op.EXEC)
    t = _EXEC.unpack_from(rec)
    ix = abi.EXEC.index
    flags, argc = t[ix["flags"]], t[ix["argc"]]
    lens = (t[ix["binary_len"]], t[ix["filename_len"]], t[ix["args_len"]], t[ix["cwd_len"]])
    end = _EXEC.size + sum(lens)
    if end > len(rec):
        raise DecodeError(Op.EXEC, f"strings end at {end}, record has {len(rec)}")
    pos = _EXEC.size
    parts = []
    for n in lens:
        parts.append(rec[pos:pos + n])
        pos += n
    binary, filename, args_raw, cwd = parts
    args = tuple(_s(a) for a in args_raw.split(b"\0"))
    if args and args[-1] == "" and args_raw.endswith(b"\0"):
        args = args[:-1]
    return ExecEvent(t[ix["hdr.ts"]], _proc(t, _PROC_AT), _s(binary), _s(filename), args, argc,
                     bool(flags & abi.F_ARGS_TRUNC), _s(cwd),
                     bool(flags & abi.F_BINARY_TRUNC))


def decode_fork(rec: bytes) -> ForkEvent:
    _need(rec, _FORK.size, Op.FORK)
    t = _FORK.unpack_from(rec)
    return ForkEvent(t[abi.FORK.index["hdr.ts"]], _proc(t, _PROC_AT))


def decode_exit(rec: bytes) -> ExitEvent:
    _need(rec, _EXIT.size, Op.EXIT)
    t = _EXIT.unpack_from(rec)
    return ExitEvent(t[abi.EXIT.index["hdr.ts"]], _proc(t, _PROC_AT), t[abi.EXIT.index["status"]])


# The mr_proc part of a record, as bytes -> its Proc: events come in bursts from one task,
# so the same bytes recur; a hit costs a slice and a dict lookup instead of unpacking
# eleven fields. Bounded: cleared when full (pipeline thread only).
_PROC_RAW = abi.PROC.compile()
_PROC_OFF = _HDR.size                         # mr_proc follows the header in every record
_PROC_END = _PROC_OFF + _PROC_RAW.size
_PROCS: dict[bytes, Proc] = {}
_PROCS_MAX = 4096


def _proc_of(raw: bytes) -> Proc:
    """Proc of a record's mr_proc bytes (`_PROCS`)."""
    if len(_PROCS) >= _PROCS_MAX:
        _PROCS.clear()
    t = _PROC_RAW.unpack(raw)
    p: Proc = _new_tuple(Proc, (*t[:10], _comm(t[10])))
    _PROCS[raw] = p
    return p


# open's own fields after mr_proc (flags, ret, pflags, path_len), and the timestamp
_O_TAIL = struct.Struct("<IiHH")
_TS = struct.Struct("<Q")
_TS_AT = struct.calcsize(_HDR.format[:-1])  # hdr.ts, the header's last field
if (_OPEN.format != _HDR.format + _PROC_RAW.format[1:] + _O_TAIL.format[1:] + "4x"
        or _HDR.format[-1] != "Q"):  # abi.py changed: update the two structs above
    raise ImportError(f"decode_open's layout is out of date: {_OPEN.format}")


def decode_open(rec: bytes) -> OpenEvent:
    # the most frequent record: no per-call lookups, the Proc from `_PROCS`
    size = _OPEN.size
    if len(rec) < size:
        raise DecodeError(Op.OPEN, f"{len(rec)} bytes, need {size}")
    flags, ret, pflags, n = _O_TAIL.unpack_from(rec, _PROC_END)
    if size + n > len(rec):
        raise DecodeError(Op.OPEN, f"path of {n} bytes past the record end")
    raw = rec[_PROC_OFF:_PROC_END]
    proc = _PROCS.get(raw) or _proc_of(raw)
    ev: OpenEvent = _new_tuple(OpenEvent, (
        _TS.unpack_from(rec, _TS_AT)[0], proc,
        rec[size:size + n].decode("utf-8", "backslashreplace"),
        flags, ret, bool(pflags & abi.F_PATH_RAW), bool(pflags & abi.F_PATH_TRUNC),
        bool(pflags & abi.F_ROOT_PRIVATE), EventType.OPEN, None))
    return ev


_REPEAT = abi.REPEAT.compile()


def decode_repeat(rec: bytes) -> OpenEvent:
    """A summary of repeats -> the repeated open with `repeat` = (count, first, last)."""
    size = _REPEAT.size
    if len(rec) < size + _HDR.size:
        raise DecodeError(Op.REPEAT, f"{len(rec)} bytes, need {size + _HDR.size}")
    _op, _size, _cpu, _ts, count, first, last = _REPEAT.unpack_from(rec)
    inner = rec[size:]
    op = _OP.unpack_from(inner)[0]
    if op != Op.OPEN:
        raise DecodeError(Op.REPEAT, f"a summary of op {op}")
    ev = decode_open(inner)
    return ev._replace(ts=last, repeat=(count, first, last))


def _addr(family: int, raw: bytes) -> str | None:
    if family == AF_INET:
        return None if raw[:4] == b"\0\0\0\0" else socket.inet_ntop(AF_INET, raw[:4])
    if family == AF_INET6:
        return None if raw == bytes(16) else socket.inet_ntop(AF_INET6, raw)
    return None


_NET_TYPES = {Op.CONNECT: EventType.CONNECT, Op.ACCEPT: EventType.ACCEPT,
              Op.LISTEN: EventType.LISTEN, Op.SEND: EventType.SEND}


def decode_net(rec: bytes) -> NetEvent:
    _need(rec, _NET.size, Op.CONNECT)
    t = _NET.unpack_from(rec)
    ix = abi.NET.index
    fam = t[ix["family"]]
    return NetEvent(_NET_TYPES[Op(t[ix["hdr.op"]])], t[ix["hdr.ts"]], _proc(t, _PROC_AT), fam,
                    t[ix["protocol"]], _addr(fam, t[ix["saddr"]]), t[ix["sport"]],
                    _addr(fam, t[ix["daddr"]]), t[ix["dport"]])


def decode_cgroup(rec: bytes) -> CgroupEvent:
    _need(rec, _CGROUP.size, Op.CGROUP_MKDIR)
    t = _CGROUP.unpack_from(rec)
    ix = abi.CGROUP.index
    n = t[ix["path_len"]]
    if _CGROUP.size + n > len(rec):
        raise DecodeError(Op.CGROUP_MKDIR, f"path of {n} bytes past the record end")
    return CgroupEvent(t[ix["hdr.op"]] == Op.CGROUP_MKDIR, t[ix["hdr.ts"]], t[ix["id"]],
                       t[ix["level"]], _s(rec[_CGROUP.size:_CGROUP.size + n]))


_IDENT = struct.Struct("<QQ")


def decode_enforce(rec: bytes) -> EnforceEvent:
    _need(rec, _ENFORCE.size, Op.ENFORCE)
    t = _ENFORCE.unpack_from(rec)
    ix = abi.ENFORCE.index
    n1, n2 = t[ix["path_len"]], t[ix["path2_len"]]
    end = _ENFORCE.size + n1 + n2
    if end > len(rec):
        raise DecodeError(Op.ENFORCE, f"paths end at {end}, record has {len(rec)}")
    fam = t[ix["family"]]
    p1 = rec[_ENFORCE.size:_ENFORCE.size + n1]
    p2 = rec[_ENFORCE.size + n1:end]
    kind, raw, arg = t[ix["kind"]], t[ix["addr"]], t[ix["arg"]]
    if kind in (EKind.NS, EKind.SETID):  # issue 13: a u64 in addr, family = setid bits
        return EnforceEvent(t[ix["hdr.ts"]], _proc(t, _PROC_AT), kind, t[ix["action"]],
                            t[ix["policies"]], t[ix["enforced"]], arg, fam, None,
                            0, _s(p1), _s(p2), value=int.from_bytes(raw[:8], "little"))
    if kind == EKind.SYSCALL and fam & abi.ES_RESULT:  # issue 13: a mount call's exit
        return EnforceEvent(t[ix["hdr.ts"]], _proc(t, _PROC_AT), kind, t[ix["action"]],
                            t[ix["policies"]], t[ix["enforced"]], arg, fam, None, 0,
                            _s(p1), _s(p2), value=int.from_bytes(raw[:8], "little"),
                            ret=int.from_bytes(raw[8:16], "little", signed=True))
    ident = None
    if kind in (abi.EKind.LINK, abi.EKind.EXEC, abi.EKind.DRIFT) or (
            kind == abi.EKind.FILE and arg & abi.EF_IDENT):
        ident = _IDENT.unpack(raw)
        if ident == (0, 0):  # a record made in user space (a held exec's decision)
            ident = None
    return EnforceEvent(t[ix["hdr.ts"]], _proc(t, _PROC_AT), kind, t[ix["action"]],
                        t[ix["policies"]], t[ix["enforced"]], arg, fam,
                        _addr(fam, raw), t[ix["port"]], _s(p1), _s(p2), ident=ident)


def decode_syscall(rec: bytes) -> SyscallEvent:
    _need(rec, _SYSOBS.size, Op.SYSCALL)
    t = _SYSOBS.unpack_from(rec)
    ix = abi.SYSOBS.index
    lens = (t[ix["path_len"]], t[ix["path2_len"]], t[ix["path3_len"]])
    end = _SYSOBS.size + sum(lens)
    if end > len(rec):
        raise DecodeError(Op.SYSCALL, f"strings end at {end}, record has {len(rec)}")
    pos = _SYSOBS.size
    parts = []
    for n in lens:
        parts.append(_s(rec[pos:pos + n]))
        pos += n
    fam = t[ix["family"]]
    peer = t[ix["flags"]] & (abi.SO_STDIN_SOCK | abi.SO_STDOUT_SOCK | abi.SO_STDERR_SOCK)
    return SyscallEvent(t[ix["hdr.ts"]], _proc(t, _PROC_AT), t[ix["nr"]], t[ix["ret"]],
                        (t[ix["arg0"]], t[ix["arg1"]], t[ix["arg2"]], t[ix["arg3"]]),
                        t[ix["flags"]], fam, _addr(fam, t[ix["addr"]]) if peer else None,
                        t[ix["port"]], parts[0], parts[1], parts[2])


DECODERS: dict[int, Callable[[bytes], AnyEvent]] = {
    Op.EXEC: decode_exec,
    Op.FORK: decode_fork,
    Op.EXIT: decode_exit,
    Op.OPEN: decode_open,
    Op.CONNECT: decode_net,
    Op.ACCEPT: decode_net,
    Op.LISTEN: decode_net,
    Op.SEND: decode_net,
    Op.CGROUP_MKDIR: decode_cgroup,
    Op.CGROUP_RMDIR: decode_cgroup,
    Op.ENFORCE: decode_enforce,
    Op.SYSCALL: decode_syscall,
    Op.REPEAT: decode_repeat,
}


def decode(rec: bytes) -> AnyEvent:
    if len(rec) < _HDR.size:
        raise DecodeError(-1, f"{len(rec)} bytes is shorter than the header")
    op = _OP.unpack_from(rec)[0]
    fn = DECODERS.get(op)
    if fn is None:
        raise DecodeError(op, "unknown opcode")
    return fn(rec)
