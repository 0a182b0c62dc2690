"""The `syscall` object of an observed-syscall event (progs/syscalls_obs.bpf.c), built
once here for agent/output/schema.py. Field meanings per syscall: docs/events.md."""

from __future__ import annotations

import errno
import socket
from typing import Any

from moray.agent.bpf import abi
from moray.agent.events.types import SyscallEvent
from moray.api.policy.syscalls import X86_64

NAMES: dict[int, str] = {nr: name for name, nr in X86_64.items()}

PTRACE_REQUESTS = {0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA",
                   4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSER",
                   7: "PTRACE_CONT", 8: "PTRACE_KILL", 12: "PTRACE_GETREGS",
                   13: "PTRACE_SETREGS", 16: "PTRACE_ATTACH", 17: "PTRACE_DETACH",
                   0x4206: "PTRACE_SEIZE", 0x4207: "PTRACE_INTERRUPT"}
CLONE_NS = (("mnt", 0x00020000), ("cgroup", 0x02000000), ("uts", 0x04000000),
            ("ipc", 0x08000000), ("user", 0x10000000), ("pid", 0x20000000),
            ("net", 0x40000000), ("time", 0x00000080))
FAMILIES = {1: "unix", 2: "ipv4", 10: "ipv6", 16: "netlink", 17: "packet"}
_INET = {int(socket.AF_INET): "ipv4", int(socket.AF_INET6): "ipv6"}
SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 4: "rdm", 5: "seqpacket", 10: "packet"}


def _ns(flags: int) -> list[str]:
    return [n for n, bit in CLONE_NS if flags & bit]


def syscall_json(e: SyscallEvent) -> dict[str, Any]:
    name = NAMES.get(e.nr, str(e.nr))
    a0, a1, a2, a3 = e.args
    out: dict[str, Any] = {"name": name, "nr": e.nr, "result": e.ret,
                           "error": errno.errorcode.get(-e.ret, str(-e.ret)) if e.ret < 0
                           else None}
    if e.path or e.flags & abi.SO_PATH_FD:
        out["path"] = e.path
        out["path_from_fd"] = bool(e.flags & abi.SO_PATH_FD)
    if name == "ptrace":
        out["request"] = PTRACE_REQUESTS.get(a0, str(a0))
        out["target_pid"] = a1 & 0xFFFFFFFF
    elif name == "mount":
        out.update(source=e.path2, fstype=e.path3, flags=a3)
    elif name == "umount2":
        out["flags"] = a1
    elif name == "unshare":
        out["namespaces"] = _ns(a0)
        out["flags"] = a0
    elif name == "setns":
        out["fd"] = a0 & 0xFFFFFFFF
        out["namespaces"] = _ns(a1)
    elif name in ("chmod", "fchmod"):
        out["mode"] = f"{a1 & 0o7777:04o}"
    elif name in ("fchmodat", "fchmodat2"):
        out["mode"] = f"{a2 & 0o7777:04o}"
    elif name in ("setxattr", "lsetxattr", "fsetxattr"):
        out["xattr"] = e.path2
    elif name in ("link", "linkat", "symlink", "symlinkat", "rename", "renameat",
                  "renameat2"):
        out["target"] = e.path   # link/symlink: what the new name points to; rename: old
        out["newpath"] = e.path2
    elif name == "socket":
        out["family"] = FAMILIES.get(a0, str(a0))
        out["sock_type"] = SOCK_TYPES.get(a1 & 0xF, str(a1 & 0xF))
        out["protocol"] = a2
    elif name == "memfd_create":
        out["memfd_name"] = e.path
        out["flags"] = a1
    elif name in ("process_vm_readv", "process_vm_writev"):
        out["target_pid"] = a0 & 0xFFFFFFFF
    elif name == "utimensat":
        out["flags"] = a3
    elif name in ("dup2", "dup3"):
        out["fd"] = a1 & 0xFFFFFFFF
    if e.flags & (abi.SO_STDIN_SOCK | abi.SO_STDOUT_SOCK | abi.SO_STDERR_SOCK):
        out["stdio_socket"] = [i for i, bit in enumerate(
            (abi.SO_STDIN_SOCK, abi.SO_STDOUT_SOCK, abi.SO_STDERR_SOCK)) if e.flags & bit]
        out["peer"] = {"family": _INET.get(e.family, str(e.family)), "daddr": e.daddr,
                       "dport": e.dport}
    if name == "execve":
        out["upper_layer"] = bool(e.flags & abi.SO_UPPER)
        out["tmpfs"] = bool(e.flags & abi.SO_TMPFS)
        out["stdin_pipe"] = bool(e.flags & abi.SO_STDIN_PIPE)
        out["argc"] = a0 & 0xFFFFFFFF
    return out
