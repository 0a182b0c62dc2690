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


def apply(m: BpfMap, rows: dict[bytes, int]) -> None:
    """Write rows, then remove keys not in rows (new entries first: no unwatched gap)."""
    for k, v in rows.items():
        m.update(k, v.to_bytes(4, "little"))
    for k in list(m.keys()):
        if k not in rows:
            m.delete(k)
