"""Seccomp user notifications: receive one, read the caller's memory, answer it.

The kernel's structs (include/uapi/linux/seccomp.h) mirrored once here:
``struct seccomp_notif`` (80 bytes: id, pid, flags, seccomp_data) and
``struct seccomp_notif_resp`` (24 bytes: id, val, error, flags). Pointer arguments are
read from ``/proc/<tid>/mem`` of the caller, which is stopped in the call; the caller's
*other* threads are not, so what is read can differ from what the kernel reads when the
call continues (the TOCTOU of user notification, docs/micro.md "Exact or best effort").
``id_valid`` must be asked after every read of the caller's memory or /proc entries and
before answering: a caller that died meanwhile may have had its pid reused, and what was
read then belongs to another process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

NOTIF = struct.Struct("=QIIiIQ6Q")          # id, pid, flags, nr, arch, ip, args[6]
RESP = struct.Struct("=QqiI")               # id, val, error, flags


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("!") << 8) | nr


SECCOMP_IOCTL_NOTIF_RECV = _iowr(0, NOTIF.size)
SECCOMP_IOCTL_NOTIF_SEND = _iowr(1, RESP.size)
SECCOMP_IOCTL_NOTIF_ID_VALID = (1 << 30) | (8 << 16) | (ord("!") << 8) | 2
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
PATH_MAX = 4096


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    pid: int      # the calling thread (tid), in the supervisor's pid namespace
    nr: int
    arch: int
    args: tuple[int, int, int, int, int, int]

    def int_arg(self, i: int) -> int:
        """Argument *i* as a C int (fds, pids: the low 32 bits, signed)."""
        v = self.args[i] & 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v


def recv(fd: int) -> Notification | None:
    """The next notification; None when its caller went away before we took it."""
    buf = bytearray(NOTIF.size)
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    nid, pid, _flags, nr, arch, _ip, a0, a1, a2, a3, a4, a5 = NOTIF.unpack(buf)
    return Notification(nid, pid, nr, arch, (a0, a1, a2, a3, a4, a5))


def id_valid(fd: int, nid: int) -> bool:
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", nid))
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    return True


def _send(fd: int, nid: int, error: int, flags: int) -> bool:
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, RESP.pack(nid, 0, error, flags))
    except OSError as err:
        if err.errno == errno.ENOENT:  # the caller is gone (killed, or interrupted)
            return False
        raise
    return True


def allow(fd: int, nid: int) -> bool:
    """Let the call run as the caller made it. Safe only where the decision does not
    depend on memory the caller can still change (see the module docstring)."""
    return _send(fd, nid, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)


def refuse(fd: int, nid: int, err: int = errno.EPERM) -> bool:
    """Fail the call with -err; the call is not made."""
    return _send(fd, nid, -err, 0)


class Memory:
    """The caller's address space (``/proc/<tid>/mem``), opened per notification: a
    descriptor kept across an execve would still read the old image."""

    def __init__(self, tid: int, proc: str = "/proc") -> None:
        self.fd = os.open(f"{proc}/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, addr: int, size: int) -> bytes:
        return os.pread(self.fd, size, addr)

    def string(self, addr: int, limit: int = PATH_MAX) -> bytes:
        """A NUL-terminated string at *addr*, read page by page (a string may end just
        before an unmapped page). Raises OSError (EFAULT-like) for a bad pointer;
        ValueError when longer than *limit* (the kernel would say ENAMETOOLONG)."""
        out = b""
        while len(out) < limit:
            n = 4096 - ((addr + len(out)) & 4095)
            chunk = os.pread(self.fd, n, addr + len(out))
            if not chunk:
                raise OSError(errno.EFAULT, "unreadable string")
            end = chunk.find(b"\0")
            if end >= 0:
                return out + chunk[:end]
            out += chunk
        raise ValueError("longer than PATH_MAX")


ADDFD = struct.Struct("=QIIII")             # id, flags, srcfd, newfd, newfd_flags
SECCOMP_IOCTL_NOTIF_ADDFD = (1 << 30) | (ADDFD.size << 16) | (ord("!") << 8) | 3
SECCOMP_ADDFD_FLAG_SEND = 1 << 1


def add_fd_and_return(fd: int, nid: int, srcfd: int, cloexec: bool) -> bool:
    """Install a copy of our *srcfd* in the caller and make its call return that fd's
    number, in one step (SECCOMP_ADDFD_FLAG_SEND, Linux 5.14+): the caller gets exactly
    the file the supervisor opened and checked. False when the caller is gone."""
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ADDFD,
                    ADDFD.pack(nid, SECCOMP_ADDFD_FLAG_SEND, srcfd, 0,
                               os.O_CLOEXEC if cloexec else 0))
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    return True
