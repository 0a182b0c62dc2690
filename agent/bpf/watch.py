"""The watched-path set for file-open events (map mr_watch, an LPM trie).

The kernel reports an open when the longest stored prefix of its path has the REPORT bit;
an entry with value 0 carves an exception out of a watched directory (e.g. /etc/ld.so.cache,
opened by every dynamically linked exec). Directory prefixes end with '/'. SSH keys live in
each user's home: the defaults add `<home>/.ssh/` for every home in the host's passwd.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from moray.agent.bpf import abi
from moray.agent.bpf.loader import BpfMap

log = logging.getLogger(__name__)

REPORT = 1

DEFAULT_WATCH: tuple[str, ...] = (
    "/etc/",
    "/root/",
    "/var/run/secrets/",   # Kubernetes service-account tokens (as written)
    "/run/secrets/",       # ... and as resolved (/var/run -> /run)
    "/var/lib/kubelet/pods/",
    "/proc/sys/kernel/core_pattern",
    "/sys/fs/cgroup/release_agent",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/log/",
    "/boot/",
    "/lib/modules/",
    "/usr/lib/modules/",
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
)

# Opened by nearly every process: reporting them would drown the rest.
DEFAULT_IGNORE: tuple[str, ...] = (
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/locale.alias",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d/",
)

_KEY = abi.WATCH_KEY.compile()


def key(prefix: str) -> bytes:
    raw = prefix.encode()
    if not raw or len(raw) > abi.WATCH_LEN - 1:
        raise ValueError(f"watched path {prefix!r}: 1..{abi.WATCH_LEN - 1} bytes")
    return _KEY.pack(len(raw) * 8, raw)


def ssh_dirs(passwd: str = "/etc/passwd") -> list[str]:
    homes: set[str] = set()
    try:
        with open(passwd) as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 6 and parts[5].startswith("/") and parts[5] != "/":
                    homes.add(parts[5].rstrip("/") + "/.ssh/")
    except OSError as err:
        log.warning("cannot read %s for SSH key directories: %s", passwd, err.strerror)
    return sorted(homes)


def build(watch: Iterable[str], ignore: Iterable[str]) -> dict[bytes, int]:
    rows: dict[bytes, int] = {}
    for p in watch:
        rows[key(p)] = REPORT
    for p in ignore:
        rows[key(p)] = 0
    return rows


def ancestors(rows: dict[bytes, int]) -> dict[bytes, int]:
    """mr_watch_anc's rows: every directory ("/", "/var/", ...) that is a proper prefix of a
    row of mr_watch, exceptions included, with its length in bytes as the value. The
    kernel caches "nothing in this directory is watched" for relative opens
    (bpf/progs/file.bpf.c) only where the directory is neither watched itself nor one of
    these: /run/ holds no watched directory, but /run/docker.sock is watched."""
    out: dict[bytes, int] = {}
    for k in rows:
        plen = int.from_bytes(k[:4], "little") // 8
        path = k[4:4 + plen]
        for i in range(plen - 1):
            if path[i] == 0x2F:  # '/'
                out[_KEY.pack((i + 1) * 8, path[:i + 1])] = i + 1
    return out


def _sync(m: BpfMap, rows: dict[bytes, int]) -> None:
    for k, v in rows.items():
        m.update(k, v.to_bytes(4, "little"))
    for k in list(m.keys()):
        if k not in rows:
            m.delete(k)


def apply(m: BpfMap, rows: dict[bytes, int], anc: BpfMap | None = None,
          gen: BpfMap | None = None) -> None:
    """Write rows, then remove keys not in rows (new entries first: no unwatched gap).
    With *anc* (mr_watch_anc) and *gen* (mr_pathgen): the watched rows' ancestor
    directories first (more of them only means fewer cached directories), and the watch
    set's generation bumped last, so that no directory the kernel cached as unwatched under
    the previous set counts any more (bpf/maps/files.h)."""
    want = ancestors(rows) if anc is not None else {}
    if anc is not None:
        for k, v in want.items():
            anc.update(k, v.to_bytes(4, "little"))
    _sync(m, rows)
    if anc is not None:
        _sync(anc, want)
    if gen is not None:
        key = (1).to_bytes(4, "little")
        cur = gen.lookup(key) or bytes(16)
        n = int.from_bytes(cur[:8], "little") + 1
        gen.update(key, n.to_bytes(8, "little") + cur[8:])
