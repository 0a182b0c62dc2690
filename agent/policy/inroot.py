"""Reaching the file a killed call was about, inside the root its process saw (issue 13,
must-have 5): shared by the repairs of setid (residue.py), mounts (mount_residue.py) and
changes by identity (identity.py).

``open_in_root`` resolves with openat2 RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, so a
symlink or `..` the container planted cannot point the agent (root on the host) at one of
the host's files; ``target_of`` is the path a kernel record names.
"""

from __future__ import annotations

import ctypes
import os

from moray.agent.events.types import EnforceEvent

_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def open_in_root(root: str, path: str, follow: bool = True) -> int:
    """An O_PATH descriptor of *path* resolved inside *root* (symlinks and `..` stay in
    it). Raises OSError."""
    rfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW), 0,
                       _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(_SYS_OPENAT2, rfd, os.fsencode(path), ctypes.byref(how),
                           ctypes.c_size_t(ctypes.sizeof(how)))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(fd)
    finally:
        os.close(rfd)


def target_of(ev: EnforceEvent) -> str:
    """The file a setid or mount record is about: path2 as passed (absolute), else joined to the
    directory it is relative to, else the descriptor's file (path)."""
    if ev.path2.startswith("/"):
        return ev.path2
    if ev.path2:
        return ev.path.rstrip("/") + "/" + ev.path2
    return ev.path
