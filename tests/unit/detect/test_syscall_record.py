"""mr_sysobs records (progs/syscalls_obs.bpf.c) -> SyscallEvent -> the `syscall` JSON
object, from crafted records laid out by the checked ABI mirror; corrupt records raise.
Also which detection programs load on a kernel (missing tracepoints skipped)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from moray.agent.bpf import abi
from moray.agent.detect.programs import programs_to_skip
from moray.agent.events.decode import DecodeError, decode
from moray.agent.events.types import SyscallEvent
from moray.agent.output.syscalls_json import syscall_json

_S = abi.SYSOBS.compile()


def record(nr: int, ret: int, args: tuple[int, int, int, int], flags: int = 0,
           family: int = 0, port: int = 0, addr: bytes = bytes(16),
           strings: tuple[bytes, bytes, bytes] = (b"", b"", b"")) -> bytes:
    data = b"".join(strings)
    size = _S.size + len(data)
    proc = (10, 11, 1, 0, 0, 0, 4026531840, 77, 123_000_000, 1_000_000, b"sh".ljust(16, b"\0"))
    fixed = _S.pack(abi.Op.SYSCALL, size, 0, 5_000, *proc, ret, *args, nr, flags, family,
                    port, *(len(s) for s in strings), addr)
    return fixed + data


def test_ptrace_attach_failed() -> None:
    e = decode(record(101, -1, (16, 42, 0, 0)))
    assert isinstance(e, SyscallEvent) and e.nr == 101 and e.ret == -1
    j = syscall_json(e)
    assert j["name"] == "ptrace" and j["request"] == "PTRACE_ATTACH" and j["target_pid"] == 42
    assert j["error"] == "EPERM" and j["result"] == -1


def test_mount_strings() -> None:
    e = decode(record(165, -1, (0, 0, 0, 0), strings=(b"/mnt", b"none", b"tmpfs")))
    j = syscall_json(e)  # type: ignore[arg-type]
    assert (j["path"], j["source"], j["fstype"]) == ("/mnt", "none", "tmpfs")


def test_exec_with_socket_stdio_and_upper_layer() -> None:
    addr = socket.inet_aton("10.0.0.9") + bytes(12)
    flags = abi.SO_STDIN_SOCK | abi.SO_STDOUT_SOCK | abi.SO_UPPER | abi.SO_PATH_FD
    e = decode(record(59, 0, (0, 0, 0, 0), flags, socket.AF_INET, 4444, addr,
                      (b"/tmp/x", b"", b"")))
    j = syscall_json(e)  # type: ignore[arg-type]
    assert j["name"] == "execve" and j["stdio_socket"] == [0, 1] and j["upper_layer"]
    assert j["peer"] == {"family": "ipv4", "daddr": "10.0.0.9", "dport": 4444}
    assert j["path"] == "/tmp/x" and j["path_from_fd"]



def test_exec_with_piped_stdin_carries_argc() -> None:
    e = decode(record(59, 0, (1, 0, 0, 0), abi.SO_STDIN_PIPE, strings=(b"/bin/busybox", b"", b"")))
    j = syscall_json(e)  # type: ignore[arg-type]
    assert j["stdin_pipe"] is True and j["argc"] == 1 and "stdio_socket" not in j
    j = syscall_json(decode(record(59, 0, (3, 0, 0, 0), abi.SO_UPPER)))  # type: ignore[arg-type]
    assert j["stdin_pipe"] is False and j["argc"] == 3

@pytest.mark.parametrize(("nr", "args", "key", "value"), [
    (272, (0x20000 | 0x40000000, 0, 0, 0), "namespaces", ["mnt", "net"]),
    (90, (0, 0o104755, 0, 0), "mode", "4755"),
    (268, (0, 0, 0o2755, 0), "mode", "2755"),
    (41, (17, 3, 0, 0), "family", "packet"),
    (41, (2, 3 | 0o4000, 6, 0), "sock_type", "raw"),
])
def test_decoded_arguments(nr: int, args: tuple[int, int, int, int], key: str,
                           value: object) -> None:
    assert syscall_json(decode(record(nr, 0, args)))[key] == value  # type: ignore[arg-type]


def test_corrupt_records() -> None:
    good = record(88, 0, (0, 0, 0, 0), strings=(b"/etc/shadow", b"/tmp/l", b""))
    with pytest.raises(DecodeError):
        decode(good[:-3])  # strings past the end
    with pytest.raises(DecodeError):
        decode(good[:_S.size - 1])


def test_missing_tracepoints_skipped(tmp_path: Path) -> None:
    (tmp_path / "events/syscalls/sys_enter_ptrace").mkdir(parents=True)
    progs = [("mr_so_in_ptrace", "tracepoint/syscalls/sys_enter_ptrace"),
             ("mr_so_in_fchmodat2", "tracepoint/syscalls/sys_enter_fchmodat2"),
             ("mr_so_raw_module", "raw_tracepoint/sys_exit"),
             ("mr_exec", "tp_btf/sched_process_exec"),
             ("mr_enter_open", "tracepoint/syscalls/sys_enter_nope")]  # not ours: untouched
    assert programs_to_skip(progs, str(tmp_path)) == ["mr_so_in_fchmodat2"]
    (tmp_path / "events/syscalls/sys_exit_finit_module").mkdir(parents=True)
    assert "mr_so_raw_module" in programs_to_skip(progs, str(tmp_path))


def test_process_vm_readv_names_its_target() -> None:
    e = decode(record(310, -1, (4242, 0, 1, 0)))
    j = syscall_json(e)  # type: ignore[arg-type]
    assert j["name"] == "process_vm_readv" and j["target_pid"] == 4242
    assert j["error"] == "EPERM"
    j = syscall_json(decode(record(311, 8, (7, 0, 1, 0))))  # type: ignore[arg-type]
    assert j["name"] == "process_vm_writev" and j["target_pid"] == 7 and j["error"] is None


def test_utimensat_path() -> None:
    e = decode(record(280, 0, (0xFFFFFF9C, 0, 0x7F00, 0x100), strings=(b"/bin/ls", b"", b"")))
    j = syscall_json(e)  # type: ignore[arg-type]
    assert (j["name"], j["path"], j["flags"]) == ("utimensat", "/bin/ls", 0x100)
