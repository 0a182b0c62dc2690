"""Network identity of a process: its netns inode, interfaces and addresses.

:class:`NetnsReader` owns a cache netns inode -> :class:`NetnsInfo`.  It changes when a
namespace is first seen (read once), when the caller calls :meth:`NetnsReader.forget`
(the last container using it went away), and by LRU eviction beyond ``max_entries``.

Reading: a short-lived thread opens ``<proc>/<pid>/ns/net``, ``setns(2)``s *itself* into
it, dumps links and addresses with a ``pyroute2.IPRoute`` created there (a netlink socket
belongs to the namespace it was created in), switches back and exits.  setns on a
thread changes only that thread, so the agent's other threads never leave the host's
namespace; it costs a thread start plus two netlink dumps (~2-5 ms), against the fork
that pyroute2's own ``netns=`` support pays for every socket.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from moray.errors import KernelError

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

Interfaces = tuple[tuple[str, tuple[str, ...]], ...]


class NetnsError(KernelError, OSError):
    """A namespace could not be entered or read."""


@dataclass(frozen=True, slots=True)
class NetnsInfo:
    inode: int
    interfaces: Interfaces  # ((ifname, ("addr/prefix", ...)), ...) sorted by ifindex


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


def read_interfaces(ns_path: str, timeout: float = 2.0) -> Interfaces:
    """Interfaces and addresses inside the network namespace at *ns_path*."""
    result: list[Interfaces] = []
    errors: list[BaseException] = []
    # imported on first use, here in the host's namespace: pyroute2 adds ~10 MB to the
    # agent's RSS, and a host with no container network namespace to read never needs it
    import pyroute2  # noqa: F401

    def work() -> None:
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                target = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(target)
                finally:
                    os.close(target)
                try:
                    result.append(_dump())
                finally:
                    _setns(home)  # the thread ends anyway; be tidy for pyroute2's loop
            finally:
                os.close(home)
        except (OSError, ValueError, RuntimeError) as err:
            errors.append(err)

    thread = threading.Thread(target=work, name="moray-netns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise NetnsError(0, f"netns read timed out: {ns_path}")
    if errors:
        raise NetnsError(0, f"netns read failed: {ns_path}: {errors[0]}") from errors[0]
    return result[0]


def _dump() -> Interfaces:
    from pyroute2 import IPRoute  # no stubs, no py.typed: see [tool.mypy.overrides]

    with IPRoute() as ipr:
        names = {int(link["index"]): str(link.get("IFLA_IFNAME")) for link in ipr.get_links()}
        addrs: dict[int, list[str]] = {}
        for msg in ipr.get_addr():
            addr = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if addr:
                addrs.setdefault(int(msg["index"]), []).append(f"{addr}/{msg['prefixlen']}")
    return tuple((names[i], tuple(addrs.get(i, ()))) for i in sorted(names))


class NetnsReader:
    """Netns identity per pid, cached per netns inode (bounded LRU)."""

    def __init__(self, proc: str = "/proc", max_entries: int = 1024) -> None:
        self.proc = proc
        self.max_entries = max_entries
        self._cache: OrderedDict[int, NetnsInfo] = OrderedDict()
        self.reads = 0

    def inode(self, pid: int) -> int | None:
        """Inode of ``<proc>/<pid>/ns/net``, None if the process is gone."""
        try:
            return os.stat(f"{self.proc}/{pid}/ns/net").st_ino
        except OSError:
            return None

    def read(self, pid: int) -> NetnsInfo | None:
        """The namespace of *pid*; its interfaces are read once per namespace.

        Returns None when the process is gone; raises :class:`NetnsError` when the
        namespace exists but cannot be read.
        """
        ino = self.inode(pid)
        if ino is None:
            return None
        info = self._cache.get(ino)
        if info is not None:
            self._cache.move_to_end(ino)
            return info
        self.reads += 1
        info = NetnsInfo(ino, read_interfaces(f"{self.proc}/{pid}/ns/net"))
        self._cache[ino] = info
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return info

    def forget(self, inode: int) -> None:
        self._cache.pop(inode, None)
