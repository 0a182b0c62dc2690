"""Decoders against raw records recorded from the real kernel
(tests/fixtures/records/*.bin, re-recorded by capture.py there), and against corrupt input."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from moray.agent.events.decode import DecodeError, decode
from moray.agent.events.types import (
    CgroupEvent,
    EventType,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    NetEvent,
    OpenEvent,
)

REC = Path(__file__).resolve().parents[1] / "fixtures" / "records"


def rec(name: str) -> bytes:
    return (REC / f"{name}.bin").read_bytes()


def test_exec() -> None:
    e = decode(rec("exec_echo"))
    assert isinstance(e, ExecEvent)
    assert e.binary == "/usr/bin/echo" and e.filename == "/bin/echo"
    assert e.args == ("echo", "moray-fixture", "arg two") and e.argc == 3
    assert not e.args_truncated and e.cwd == "/tmp"
    assert e.proc.comm == "echo" and e.proc.pid == e.proc.tid and e.proc.ppid > 0
    assert e.proc.start_ns > e.proc.pstart_ns > 0 and e.proc.mntns > 0


def test_fork_then_exec_same_process() -> None:
    f, e = decode(rec("fork")), decode(rec("exec_echo"))
    assert isinstance(f, ForkEvent) and isinstance(e, ExecEvent)
    assert (f.proc.pid, f.proc.start_ns) == (e.proc.pid, e.proc.start_ns)


def test_exit_status() -> None:
    e = decode(rec("exit"))
    assert isinstance(e, ExitEvent)
    assert e.exit_code == 3 and e.signal is None


def test_open_and_failed_open() -> None:
    o = decode(rec("open"))
    assert isinstance(o, OpenEvent)
    assert o.path == "/etc/hostname" and o.ret >= 0 and not o.path_as_written
    f = decode(rec("open_failed"))
    assert isinstance(f, OpenEvent)
    assert f.path == "/etc/moray-missing" and f.ret == -2 and f.path_as_written


@pytest.mark.parametrize("name,kind,family", [
    ("connect", EventType.CONNECT, socket.AF_INET),
    ("connect6", EventType.CONNECT, socket.AF_INET6),
    ("listen", EventType.LISTEN, socket.AF_INET),
    ("listen6", EventType.LISTEN, socket.AF_INET6),
    ("accept", EventType.ACCEPT, socket.AF_INET),
    ("send", EventType.SEND, socket.AF_INET),
])
def test_network(name: str, kind: EventType, family: int) -> None:
    e = decode(rec(name))
    assert isinstance(e, NetEvent)
    assert e.type == kind and e.family == family
    loop = "127.0.0.1" if family == socket.AF_INET else "::1"
    if kind in (EventType.CONNECT, EventType.SEND):
        assert e.daddr == loop and e.dport > 0
    if kind == EventType.SEND:
        assert e.dport == 9 and e.protocol == socket.IPPROTO_UDP
    if kind == EventType.LISTEN:
        assert e.saddr == loop and e.sport > 0 and e.protocol == socket.IPPROTO_TCP
    if kind == EventType.ACCEPT:
        assert e.saddr == e.daddr == loop and e.sport > 0 and e.dport > 0


def test_cgroup_records() -> None:
    mk, rm = decode(rec("cgroup_mkdir")), decode(rec("cgroup_rmdir"))
    assert isinstance(mk, CgroupEvent) and isinstance(rm, CgroupEvent)
    assert mk.created and not rm.created and mk.id == rm.id and mk.level == 1
    assert mk.path.startswith("/moray-capture-")


@pytest.mark.parametrize("name", ["exec_echo", "open", "cgroup_mkdir", "connect", "exit"])
def test_truncated_record_is_an_error(name: str) -> None:
    raw = rec(name)
    for cut in (0, 8, 20, len(raw) - 1):
        if cut >= len(raw):
            continue
        with pytest.raises(DecodeError):
            decode(raw[:cut])


def test_unknown_opcode() -> None:
    raw = bytearray(rec("fork"))
    raw[0] = 200
    with pytest.raises(DecodeError, match="unknown opcode"):
        decode(bytes(raw))


def test_string_length_past_end() -> None:
    raw = bytearray(rec("open"))
    raw[98:100] = (4000).to_bytes(2, "little")  # path_len
    with pytest.raises(DecodeError):
        decode(bytes(raw))


def test_non_utf8_path_is_escaped() -> None:
    raw = bytearray(rec("open"))
    i = raw.index(b"/etc/hostname")
    raw[i + 5] = 0xFF
    e = decode(bytes(raw))
    assert isinstance(e, OpenEvent) and "\\xff" in e.path


def _reference_open(r: bytes) -> OpenEvent:
    """decode_open as it was before its Proc cache: every field from one unpack."""
    from moray.agent.bpf import abi
    from moray.agent.events.types import Proc

    layout = abi.OPEN.compile()
    t = layout.unpack_from(r)
    ix = abi.OPEN.index
    at = ix["proc.pid"]
    comm = t[at + 10].split(b"\0", 1)[0].decode("utf-8", "replace")
    n = t[ix["path_len"]]
    pf = t[ix["pflags"]]
    return OpenEvent(t[ix["hdr.ts"]], Proc(*t[at:at + 10], comm),
                     r[layout.size:layout.size + n].decode("utf-8", "backslashreplace"),
                     t[ix["flags"]], t[ix["ret"]], bool(pf & abi.F_PATH_RAW),
                     bool(pf & abi.F_PATH_TRUNC), bool(pf & abi.F_ROOT_PRIVATE))


def test_open_decoder_matches_a_full_unpack() -> None:
    """The cached-Proc decoder gives field for field what a full unpack gives, for
    many tasks (more than the cache holds), hostile comms and paths."""
    import random

    from moray.agent.bpf import abi
    from moray.agent.events import decode as d

    layout = abi.OPEN.compile()
    rng = random.Random(18)
    base = rec("open")
    paths = [b"/etc/passwd", b"\xff\xfe/bad\x80utf8", b'a"b\\c\n\x00d', b"x" * 4000, b""]
    for i in range(d._PROCS_MAX + 500):
        t = list(layout.unpack_from(base))
        ix = abi.OPEN.index
        for k in ("pid", "tid", "ppid", "uid", "euid", "gid", "mntns"):
            t[ix[f"proc.{k}"]] = rng.getrandbits(32)
        for k in ("cgroup_id", "start_ns", "pstart_ns"):
            t[ix[f"proc.{k}"]] = rng.getrandbits(64)
        t[ix["proc.comm"]] = rng.choice([b"python", b"\xffbad\0x", b"a" * 16, b""])
        t[ix["flags"]] = rng.getrandbits(32)
        t[ix["ret"]] = rng.randint(-4095, 1 << 20)
        t[ix["pflags"]] = rng.getrandbits(16)
        path = paths[i % len(paths)]
        t[ix["path_len"]] = len(path)
        r = layout.pack(*t) + path
        assert decode(r) == _reference_open(r)
        again = decode(r)  # from the cache this time
        assert again == _reference_open(r)
        assert again.proc is decode(r).proc
        assert len(d._PROCS) <= d._PROCS_MAX
        with pytest.raises(DecodeError):
            decode(r[:layout.size - 1])
        if path:
            with pytest.raises(DecodeError):
                decode(r[:-1])
