"""cgroup v2 id -> cgroup path (relative to the v2 root, e.g. ``/docker/<id>``).

The kernel reports a task's cgroup v2 id (the inode number of its cgroup directory) with
every event.  :class:`CgroupIndex` owns the map from that id to the path, and it changes on:

1. start-up: :meth:`CgroupIndex.scan` walks the v2 mount once (``os.scandir``: the dirent
   inode is the cgroup id, so no ``stat`` per directory);
2. a kernel cgroup mkdir event: :meth:`add` (id, path);
3. a kernel cgroup rmdir event: :meth:`remove`;
4. a miss in :meth:`resolve`: read ``<proc>/<pid>/cgroup`` (the ``0::`` line), check that
   the directory's inode is the id, and else a full rescan, at most once per
   ``rescan_interval`` seconds (events can be lost when the ring buffer is full).

Paths read from ``/proc/<pid>/cgroup`` are relative to the reader's cgroup namespace; the
inode check rejects them when that is not the mount's root, and the rescan takes over.
Not thread-safe: owned by the enrichment thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 262_144


def _unescape(field: str) -> str:
    """mountinfo octal escapes (``\\040`` = space)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def find_cgroup2_mount(proc: str = "/proc", pid: str = "self") -> str | None:
    """Mount point of the cgroup v2 hierarchy as seen by *pid* (``/sys/fs/cgroup`` on
    unified hosts, ``/sys/fs/cgroup/unified`` on hybrid ones), or None.

    Among several cgroup2 mounts, one of the whole hierarchy (root ``/``) is preferred,
    then the shortest mount point.
    """
    best: tuple[bool, int, str] | None = None
    try:
        with open(f"{proc}/{pid}/mountinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as err:
        log.warning("cannot read mountinfo", extra={"proc": proc, "error": str(err)})
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.startswith("cgroup2 "):
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        key = (root != "/", len(mount_point), mount_point)
        if best is None or key < best:
            best = key
    return best[2] if best else None


def normalize(path: str) -> str:
    """``docker/x/`` -> ``/docker/x``; the root is ``/``."""
    return "/" + path.strip("/")


class CgroupIndex:
    """Map cgroup v2 id -> path relative to the v2 root."""

    def __init__(self, cgroup_root: str, proc: str = "/proc", *,
                 max_entries: int = DEFAULT_MAX_ENTRIES, rescan_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cgroup_root = cgroup_root.rstrip("/") or "/"
        self.proc = proc
        self.max_entries = max_entries
        self.rescan_interval = rescan_interval
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._last_scan: float | None = None
        self.overflows = 0
        self.rescans = 0

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, cgroup_id: int) -> str | None:
        """Known path of *cgroup_id* (dict lookup only)."""
        return self._paths.get(cgroup_id)

    def add(self, cgroup_id: int, path: str) -> None:
        """Record a cgroup (kernel mkdir event, or found by a lookup)."""
        if cgroup_id not in self._paths and len(self._paths) >= self.max_entries:
            self.overflows += 1
            if self.overflows == 1:
                log.warning("cgroup index full", extra={"max_entries": self.max_entries})
            return
        self._paths[cgroup_id] = normalize(path)

    def remove(self, cgroup_id: int) -> str | None:
        """Forget a cgroup (kernel rmdir event); returns its path if it was known."""
        return self._paths.pop(cgroup_id, None)

    def scan(self) -> int:
        """Walk the v2 mount, replacing the map; returns the number of cgroups found."""
        self._last_scan = self._clock()
        self.rescans += 1
        found: dict[int, str] = {}
        try:
            found[os.stat(self.cgroup_root).st_ino] = "/"
        except OSError as err:
            log.warning("cgroup v2 root unreadable",
                        extra={"cgroup_root": self.cgroup_root, "error": str(err)})
            return 0
        for ino, path in self._walk(self.cgroup_root, ""):
            if len(found) >= self.max_entries:
                self.overflows += 1
                log.warning("cgroup walk truncated", extra={"max_entries": self.max_entries})
                break
            found[ino] = path
        self._paths = found
        return len(found)

    def _walk(self, directory: str, rel: str) -> Iterator[tuple[int, str]]:
        stack = [(directory, rel)]
        while stack:
            abs_dir, rel_dir = stack.pop()
            try:
                with os.scandir(abs_dir) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            child = f"{rel_dir}/{entry.name}"
                            yield entry.inode(), child
                            stack.append((entry.path, child))
            except OSError as err:  # removed while walking: normal
                log.debug("cgroup walk skipped", extra={"dir": abs_dir, "error": str(err)})

    def resolve(self, cgroup_id: int, pid: int | None = None) -> str | None:
        """Path of *cgroup_id*: the map, then ``/proc/<pid>/cgroup``, then a rescan."""
        path = self._paths.get(cgroup_id)
        if path is not None:
            return path
        if pid is not None:
            path = self._from_proc(cgroup_id, pid)
            if path is not None:
                self.add(cgroup_id, path)
                return path
        now = self._clock()
        if self._last_scan is None or now - self._last_scan >= self.rescan_interval:
            self.scan()
            return self._paths.get(cgroup_id)
        return None

    def _from_proc(self, cgroup_id: int, pid: int) -> str | None:
        try:
            with open(f"{self.proc}/{pid}/cgroup", encoding="utf-8",
                      errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError as err:  # the process exited: normal
            log.debug("no /proc cgroup", extra={"pid": pid, "error": str(err)})
            return None
        for line in lines:
            if line.startswith("0::"):
                path = normalize(line[3:])
                try:
                    ino = os.stat(self.cgroup_root + ("" if path == "/" else path)).st_ino
                except OSError:
                    return None
                return path if ino == cgroup_id else None
        return None
